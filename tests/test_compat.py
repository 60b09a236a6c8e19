"""The private-API shims (dist_optical/compat.py) still do what they are for on the pinned versions."""

from dist_optical.compat import skip_deepspeed_op


def test_shm_comm_op_is_marked_incompatible():
    # The op dist.setup() keeps DeepSpeed from JIT-building (its build takes a lock file that a killed
    # process leaves behind): listed as buildable here, and skipped by the comm backend once marked.
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    assert deepspeed.ops.__compatible_ops__.get(ShareMemCommBuilder.NAME) is True  # so the skip matters
    skip_deepspeed_op(ShareMemCommBuilder.NAME)
    assert build_shm_op() is None


def test_native_bf16_answers_for_this_machine():
    """oneDNN runs bf16 matmuls on x86 with AVX-512 (BW, VL, DQ); on an AVX2-only CPU a bf16 step
    falls back to a reference GEMM, so `precision: auto` must choose fp32 there."""
    import platform
    from pathlib import Path

    import pytest
    import torch

    from dist_optical.compat import native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.is_file():
        pytest.skip("the expectation below is written for x86 Linux")
    flags = set(cpuinfo.read_text().split())
    assert native_bf16(torch.device("cpu")) == ({"avx512bw", "avx512vl", "avx512dq"} <= flags)


def test_auto_precision_is_resolved_for_the_device_and_an_explicit_one_kept(monkeypatch):
    import torch

    from dist_optical.config import load_config
    from dist_optical.engine import deepspeed

    cfg = load_config(None)
    assert cfg.train.precision == "auto"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(deepspeed, "native_bf16", lambda device, native=native: native)
        assert deepspeed.with_native_precision(cfg, torch.device("cpu")).train.precision == expected
    forced = load_config(None, ["train.precision=bf16"])
    assert deepspeed.with_native_precision(forced, torch.device("cpu")) is forced
