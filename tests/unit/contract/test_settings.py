"""Settings: validated at start, one clear line per configuration error, typos reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.settings import ConfigError, load_settings, unknown_variables

DEV = {"TURBOVID_DEV_MODE": "true"}


def test_errors_are_one_line_naming_the_variable():
    with pytest.raises(ConfigError) as err:
        load_settings({**DEV, "TURBOVID_GATEWAY__PORT": "eighty"})
    assert str(err.value).startswith("TURBOVID_GATEWAY__PORT: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(("env", "names"), [
    ({}, "TURBOVID_WEBHOOKS__SECRET"),  # the dev secret outside dev mode
    ({**DEV, "TURBOVID_GATEWAY__MODELS": '["wan-huge"]', "TURBOVID_GATEWAY__DEFAULT_MODEL": "wan-huge"},
     "TURBOVID_GATEWAY__MODELS"),
    ({**DEV, "TURBOVID_WORKER__MODEL": "wan-huge"}, "TURBOVID_WORKER__MODEL"),
    ({"TURBOVID_AUTH__ENABLED": "false", "TURBOVID_WEBHOOKS__SECRET": "s"}, "TURBOVID_AUTH__ENABLED"),
])
def test_bad_combinations_are_refused_at_start(env, names):
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_a_real_secret_outside_dev_mode_is_fine():
    s = load_settings({"TURBOVID_WEBHOOKS__SECRET": "whsec_c2VjcmV0"})
    assert not s.dev_mode and s.webhooks.secret.get_secret_value() == "whsec_c2VjcmV0"


def test_local_paths_are_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings({**DEV, "TURBOVID_STORAGE__LOCAL_DIR": "data/videos"})
    assert s.storage.local_dir == tmp_path / "data" / "videos" and s.storage.local_dir.is_absolute()
    assert s.worker.cache_dir.is_absolute() and s.worker.cache_dir.parent.parent == Path(tmp_path)


def test_misspelled_variables_are_found():
    env = {"TURBOVID_WORKER__MODLE": "x", "TURBOVID_REDIS__URL": "redis://x", "TURBOVID_DEV_MODE": "1",
           "TURBOVID_GATEWAY": "x", "TURBOVID_REDIS__URL__HOST": "x", "OTHER": "1"}
    assert unknown_variables(env) == ["TURBOVID_REDIS__URL__HOST", "TURBOVID_WORKER__MODLE"]


def test_the_int8_gemm_kernel_setting_is_validated_and_its_variable_is_a_known_one():
    """worker.w8a8_backend: the kernels read TURBOVID_WORKER__W8A8_BACKEND themselves (kernels/w8a8.py), so the
    variable must be the setting's own name (no unknown-variable warning) and a bad value stops the start."""
    from kernels.w8a8 import BACKEND_ENV

    assert BACKEND_ENV == "TURBOVID_WORKER__W8A8_BACKEND"
    assert load_settings(DEV).worker.w8a8_backend == "auto"
    assert load_settings({**DEV, BACKEND_ENV: "triton"}).worker.w8a8_backend == "triton"
    assert unknown_variables({BACKEND_ENV: "gluon"}) == []
    with pytest.raises(ConfigError, match=BACKEND_ENV):
        load_settings({**DEV, BACKEND_ENV: "cutlass"})


def test_the_int8_ffn_setting_is_validated_and_its_variable_is_a_known_one():
    """worker.w8a8_ffn: read by kernels/w8a8_blockq.py as TURBOVID_WORKER__W8A8_FFN (the setting's own name)."""
    from kernels.w8a8_blockq import FFN_CHOICES, FFN_ENV

    assert FFN_ENV == "TURBOVID_WORKER__W8A8_FFN"
    assert load_settings(DEV).worker.w8a8_ffn == "rowq"
    assert load_settings({**DEV, FFN_ENV: "blockq"}).worker.w8a8_ffn == "blockq"
    assert unknown_variables({FFN_ENV: "blockq"}) == []
    assert set(FFN_CHOICES) == {"rowq", "blockq"}
    with pytest.raises(ConfigError, match=FFN_ENV):
        load_settings({**DEV, FFN_ENV: "blockwise"})
