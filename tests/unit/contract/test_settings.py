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


@pytest.mark.parametrize(("module", "env_attr", "choices_attr", "field", "default", "other", "bad"), [
    ("kernels.w8a8", "BACKEND_ENV", "BACKEND_CHOICES", "w8a8_backend", "auto", "triton", "cutlass"),
    ("kernels.w8a8_blockq", "FFN_ENV", "FFN_CHOICES", "w8a8_ffn", "rowq", "blockq", "blockwise"),
    ("kernels.sagesla", "KERNEL_ENV", "KERNEL_CHOICES", "sagesla_kernel", "auto", "triton", "fastest"),
    ("kernels.int8_quant", "KERNEL_ENV", "KERNEL_CHOICES", "quant_kernel", "auto", "triton", "cuda"),
    ("kernels.conv3d_igemm", "KERNEL_ENV", "KERNEL_CHOICES", "conv_kernel", "auto", "triton", "cudnn"),
    ("kernels.adaln", "KERNEL_ENV", "KERNEL_CHOICES", "norm_kernel", "auto", "triton", "cuda"),
])
def test_kernel_choice_settings_are_validated_and_their_variables_are_known_ones(
        module, env_attr, choices_attr, field, default, other, bad):
    """worker.w8a8_backend / w8a8_ffn / sagesla_kernel / quant_kernel / conv_kernel: the kernels read TURBOVID_WORKER__<NAME> themselves, so the
    variable must be the setting's own name (no unknown-variable warning), the kernels' choices the setting's,
    and a bad value stops the start."""
    import importlib
    import typing

    from contract.settings import WorkerSettings

    mod = importlib.import_module(module)
    env = getattr(mod, env_attr)
    assert env == f"TURBOVID_WORKER__{field.upper()}"
    assert load_settings(DEV).worker.model_dump()[field] == default
    assert load_settings({**DEV, env: other}).worker.model_dump()[field] == other
    assert unknown_variables({env: other}) == []
    assert set(getattr(mod, choices_attr)) == set(typing.get_args(WorkerSettings.model_fields[field].annotation))
    with pytest.raises(ConfigError, match=env):
        load_settings({**DEV, env: bad})
