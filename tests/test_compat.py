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
