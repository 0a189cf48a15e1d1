"""The primitives a graph may hold to run on the AI Cores of Ascend 910A and 910B, each with its source.

An entry names the MindSpore primitive as the IR dump spells it (without ``PrimFunc_``), the tensor dtypes
it may take there (``None``: any), and where the fact comes from:

* ``A910`` / ``A910B``: CANN 8.1.RC1, ``opp/built-in/op_impl/ai_core/tbe/config/ascend910/aic-ascend910-ops-info.json``
  and ``.../ascend910b/aic-ascend910b-ops-info.json`` (the AI Core operators of each SoC and their dtypes);
* ``IMPL``: CANN 8.1.RC1 ``opp/built-in/op_impl/ai_core/tbe/impl/dynamic/<op>.py`` (dtype lists of
  operators whose op-info says "dynamic format");
* ``MS-TBE``: MindSpore's TBE (AI Core) registrations, ``mindspore/python/mindspore/ops/_op_impl/tbe/<op>.py``;
* ``MS-AMP``: ``mindspore/amp.py`` (``_all_finite``: how the overflow check is built per SoC);
* ``MS-ANF``: ``mindspore/core/utils/anf_utils.cc`` (``IsRealKernel``: virtual nodes) and
  ``mindspore/ccsrc/utils/anfalgo.cc`` (``IsNopNode``: Reshape, ExpandDims, Squeeze, Flatten).

Known absences, kept out on purpose: ``RightShift`` (AI Core only on Ascend 950; ``A910``/``A910B`` list it
nowhere, CANN's AI CPU lists it), ``DropoutGenMask`` (AI CPU), ``GatherD`` and ``AdaptiveAvgPool2D`` (AI
CPU in MindSpore's mapping), and every float64 kernel (no ``double`` in any AI Core dtype list).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOATS = frozenset({"Float16", "Float32", "BFloat16"})
INTS = frozenset({"Int32", "Int64"})
NUMBERS = FLOATS | INTS
BOOL = frozenset({"Bool"})


@dataclass(frozen=True)
class AllowedOp:
    """A primitive with AI Core kernels on 910A and 910B for ``dtypes`` (``None``: no kernel is needed)."""

    dtypes: frozenset[str] | None
    source: str
    note: str = ""


def _ops(names: str, dtypes: frozenset[str] | None, source: str, note: str = "") -> dict[str, AllowedOp]:
    return {name: AllowedOp(dtypes, source, note) for name in names.split()}


STRUCTURAL = _ops("MakeTuple TupleGetItem UpdateState Load Depend Return Partial StopGradient", None,
                  "MS-ANF IsRealKernel: virtual nodes, no kernel")
NO_OPS = _ops("Reshape ExpandDims Squeeze Flatten", None, "MS-ANF IsNopNode: a view of the same memory, no kernel")
COLLECTIVES = _ops("AllReduce AllGather Broadcast ReduceScatter", None,
                   "run by HCCL (MindSpore maps them to HcomAllReduce etc.), outside AI Core / AI CPU selection")

AI_CORE = {
    **_ops("Add Sub Mul", NUMBERS | BOOL, "A910, A910B; IMPL add.py, sub.py, mul.py; MS-TBE add.py, mul.py",
           "int32 on the AI Core on both SoCs"),
    **_ops("AddN Maximum Minimum Neg Abs Square", NUMBERS, "A910, A910B; MS-TBE add_n.py, maximum.py, minimum.py, "
           "neg.py, abs.py, square.py"),
    **_ops("RealDiv Div Reciprocal", FLOATS | {"Int32"}, "A910, A910B; IMPL real_div.py; MS-TBE real_div.py, div.py, "
           "reciprocal.py"),
    **_ops("Sqrt Rsqrt Exp Log Erf Pow Floor Sigmoid Tanh", FLOATS | {"Int32"},
           "A910, A910B (no double); MS-TBE sqrt.py, rsqrt.py, exp.py, log.py, erf.py, pow.py, floor.py",
           "Pow / Sqrt / Exp list no float64"),
    **_ops("MatMul BatchMatMul", FLOATS | {"Int32"}, "A910, A910B; IMPL mat_mul.py, batch_matmul_v2.py; "
           "MS-TBE matmul.py, batch_matmul.py", "910A has no float32 cube: dvt_ms.device keeps CANN's "
           "allow_fp32_to_fp16 there, so float32 products run in float16"),
    **_ops("BiasAdd", NUMBERS, "IMPL bias_add.py; MS-TBE bias_add.py"),
    **_ops("BiasAddGrad", FLOATS, "A910, A910B; MS-TBE bias_add_grad.py"),
    **_ops("Softmax SoftmaxBackward SoftmaxGrad LogSoftmax LogSoftmaxGrad", FLOATS,
           "A910, A910B (SoftmaxV2, SoftmaxGrad, LogSoftmaxV2, LogSoftmaxGrad); MS-TBE softmax.py, logsoftmax.py"),
    **_ops("LayerNorm LayerNormGrad LayerNormGradV3 LayerNormBetaGammaBackprop LayerNormXBackprop", FLOATS,
           "A910, A910B; MS-TBE layer_norm.py, layer_norm_grad.py, layer_norm_x_backprop.py"),
    **_ops("GeLU GeLUGrad", FLOATS, "A910, A910B (Gelu, GeluGrad); MS-TBE gelu.py, gelu_grad.py"),
    **_ops("Cast", NUMBERS | BOOL | {"Int8", "UInt8", "Int16"}, "A910, A910B; MS-TBE cast.py",
           "no double among its types"),
    **_ops("Transpose Concat Split Stack Unstack StridedSlice Slice Tile BroadcastTo Select TensorMove",
           NUMBERS | BOOL | {"Int8", "UInt8"}, "A910, A910B (TransposeD, ConcatD, SplitD, Pack, Unpack, StridedSliceD, "
           "Slice, TileD, BroadcastTo, SelectV2, TensorMove); MS-TBE transpose_d.py, concat.py, pack.py, "
           "strided_slice_d.py, slice.py, tile.py, broadcast_to.py, select.py, tensor_move.py"),
    **_ops("StridedSliceGrad", FLOATS | {"Int32"}, "A910, A910B; MS-TBE strided_slice_grad_d.py"),
    **_ops("Gather", NUMBERS | BOOL, "A910, A910B (GatherV2); MS-TBE gather_v2.py", "int32 / int64 indices"),
    **_ops("ReduceSum ReduceMax", FLOATS | {"Int32"}, "A910, A910B; MS-TBE reduce_sum.py, reduce_max.py"),
    **_ops("ReduceMean", FLOATS, "A910, A910B; MS-TBE reduce_mean.py", "no int32 kernel on either SoC"),
    **_ops("ReduceAll ReduceAny LogicalNot LogicalAnd LogicalOr", BOOL,
           "A910, A910B; MS-TBE reduce_all.py, logical_not.py, logical_and.py"),
    **_ops("Less LessEqual Greater GreaterEqual Equal NotEqual", NUMBERS | BOOL,
           "A910, A910B; MS-TBE less.py, greater.py, equal.py, not_equal.py",
           "CANN's int32 Less compares as float32 on older compilers: compared integers stay below 2**24"),
    **_ops("BitwiseAnd BitwiseOr BitwiseXor", frozenset({"Int32", "Int16"}),
           "A910, A910B; MS-TBE bitwise_and.py, bitwise_or.py, bitwise_xor.py", "int32 on the AI Core on both SoCs"),
    **_ops("CumSum", FLOATS | {"Int32"}, "A910, A910B (Cumsum); MS-TBE cum_sum.py"),
    **_ops("FloorMod", FLOATS | {"Int32"}, "A910, A910B (FloorMod); MS-TBE floor_mod.py",
           "the step counter of amp.DynamicLossScaler"),
    **_ops("OnesLike ZerosLike Fill Range", NUMBERS | BOOL, "A910, A910B; MS-TBE ones_like.py, zeros_like.py, "
           "fill.py, range.py"),
    **_ops("Assign AssignAdd", NUMBERS | BOOL, "A910, A910B; MS-TBE assign.py, assign_add.py"),
    **_ops("Conv2D Conv2DBackpropInput Conv2DBackpropFilter", FLOATS,
           "A910, A910B (dynamic format); MS-TBE conv2d.py, conv2d_backprop_input.py, conv2d_backprop_filter.py",
           "float16 only on 910A: float32 convolutions run in float16 there (allow_fp32_to_fp16)"),
    **_ops("Im2Col", FLOATS, "A910 (Im2col: float16), A910B (float16/float32); MS-TBE im2col.py",
           "float16 only on 910A: the float32 soft split runs in float16 there (allow_fp32_to_fp16)"),
    **_ops("Col2Im", FLOATS, "A910, A910B (Col2im)", "the backward of the T2T soft splits; older MindSpore "
           "releases registered only an AI CPU kernel for it (mindspore/ops/_op_impl/aicpu/col2im.py): which "
           "one MindSpore 2.10 selects on a device is unverified"),
    **_ops("PadV3", NUMBERS, "A910, A910B (PadV3); MS-TBE pad_v3.py"),
    **_ops("IsFinite", FLOATS, "A910B (IsFinite); MS-AMP _all_finite",
           "amp.all_finite on 910A reads the float-status register (NPUGetFloatStatusV2) instead; on 910B it is "
           "AllFinite / IsFinite on the AI Core"),
    **_ops("NPUGetFloatStatusV2 NPUClearFloatStatusV2 AllFinite", None, "A910 (NPUGet/ClearFloatStatusV2); MS-AMP",
           "the Ascend overflow check of amp.all_finite"),
}

HOST = _ops("Shape ShapeCalc RealMakeTuple RealTupleGetItem TensorShape ScalarToTensor TupleToTensor", None,
            "MindSpore's host kernels for dynamic shapes (mindspore/ops/kernel/host): shape arithmetic run on "
            "the host CPU, not on the device", "only dynamic-shape graphs (exports) hold them")

ALLOWED: dict[str, AllowedOp] = {**STRUCTURAL, **NO_OPS, **COLLECTIVES, **HOST, **AI_CORE}
"""Every primitive the audit accepts (name as in the IR dump, without ``PrimFunc_``)."""

CPU_ONLY = ("Custom",)
"""Primitives accepted only in CPU inference graphs: the fused CPU kernels (``ops.Custom``, AOT)."""
