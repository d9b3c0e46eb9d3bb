"""The gateway's size/frame table (service/catalog.py, torch-free) must agree with the model presets."""

import pytest

from models.presets import MODELS as PRESETS
from contract.catalog import MODELS as CATALOG


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_every_served_model_has_matching_presets(model_id):
    info, spec = CATALOG[model_id], PRESETS[model_id]
    assert info.kind in spec.kinds
    assert set(info.sizes) <= set(spec.sizes)
    assert info.sizes[0] == spec.default_size
    assert info.max_frames == spec.max_frames and info.default_frames == spec.default_frames


def test_every_preset_is_served():
    assert set(PRESETS) == set(CATALOG)
