"""Precision settings: auto picks bfloat16 only where the hardware computes it; float32 is the exact default path."""

import pytest

from captioner.core import precision


def test_cpu_support_is_read_from_cpuinfo_flags(tmp_path):
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "plain"
    without.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert precision._cpu_has_native_bfloat16(with_bf16)
    assert not precision._cpu_has_native_bfloat16(without)
    assert not precision._cpu_has_native_bfloat16(tmp_path / "missing")


@pytest.mark.parametrize(("cpu", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_follows_the_cpu_when_there_is_no_gpu(monkeypatch, cpu, expected):
    monkeypatch.setattr(precision, "_gpu_has_native_bfloat16", lambda: None)
    monkeypatch.setattr(precision, "_cpu_has_native_bfloat16", lambda: cpu)
    assert precision.resolve_precision("auto") == expected


@pytest.mark.parametrize(("captions", "expected"), [(1400, "float32"), (precision.BFLOAT16_MIN_CAPTIONS, "bfloat16"),
                                                    (30000, "bfloat16"), (None, "bfloat16")])
def test_auto_trains_small_data_in_float32_even_on_bfloat16_hardware(monkeypatch, captions, expected):
    monkeypatch.setattr(precision, "_gpu_has_native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto", captions) == expected
    assert precision.resolve_precision("bfloat16", captions) == "bfloat16"  # an explicit setting is kept


def test_a_gpu_decides_over_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "_gpu_has_native_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "_cpu_has_native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto") == "float32"


def test_explicit_settings_pass_through_and_map_to_keras_policies():
    assert precision.resolve_precision("float32") == "float32"
    assert precision.resolve_precision("bfloat16") == "bfloat16"
    assert precision.keras_policy("bfloat16") == "mixed_bfloat16"
    assert precision.keras_policy("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        precision.resolve_precision("half")
