"""Multiply-accumulate (MAC) counts of a DVT cascade, computed from its :class:`CascadeSpec` alone.

No network is built: every number follows from the spec (image size, token grids, stems, widths,
depths, reuse switches). The counting rule is the one of the published DVT figures (a hook-based
counter run on the PyTorch model, batch 1):

* counted: every linear layer (``in * out`` per token, bias free), every convolution (kernel MACs per
  output position) and every batched matrix product / einsum;
* not counted: norms, activations, softmax, the performer's ``exp`` and squared norms, additions,
  reductions (``sum``), interpolation and pooling.

Per exit this gives

* stem: counted by its type (:meth:`dvt_ms.models.stems.Stem.macs`). A patch stem costs
  ``grid^2 * in_chans * patch^2 * D`` (the patch convolution); a T2T stem two token modules on the soft
  splits, then the linear projection of the last split. A token performer (``emb = token_dim``,
  ``m = int(emb * kernel_ratio)`` random features) on ``T`` tokens of width ``C`` costs
  ``T * (3 C emb + emb^2 + 2 emb^2)`` for kqv, proj and its MLP, plus its four einsums: the random features
  of k and q (``2 T m emb``), the normaliser ``q' . sum(k')`` (``T m``), ``v^T k'`` (``T emb m``) and
  ``q' (v^T k')^T`` (``T m emb``). A token transformer (one head, ``mlp_ratio`` 1) costs
  ``T * (3 C emb + emb^2 + 2 emb^2) + 2 T^2 emb``;
* each block on ``N`` tokens (class token included): ``N * (3 D^2 + D^2 + (D + r) h + h D) + 2 N^2 D``
  (qkv, proj, MLP, ``q k^T`` and ``attn v``), with ``h`` the MLP width and ``r`` the feature-reuse
  channels appended before the MLP (0 without feature reuse);
* feature reuse, per block: LayerNorm + MLP ``D_up -> reuse_hidden -> reuse_channels`` on the ``N_up``
  tokens (class token included) of the previous exit's output;
* relation reuse, once per exit: the 1x1-conv MLP ``depth_up*heads_up -> expansion*depth*heads ->
  depth*heads`` at each of the ``N_up^2`` positions of the previous exit's stacked attention logits;
* head: ``D * num_classes`` on the class token.

With these rules the published table is reproduced to the fourth decimal of a GMAC (see
``tests/test_flops.py``).
"""

from __future__ import annotations

from dvt_ms.models.spec import CascadeSpec

__all__ = ["cumulative_gflops", "exit_breakdown", "exit_macs", "flops_table", "stage_macs"]


def exit_breakdown(spec: CascadeSpec, k: int) -> dict[str, int]:
    """MACs of running exit ``k`` (0-based) alone, split into ``stem``, ``blocks``, ``feature_reuse``,
    ``relation_reuse`` and ``head``. The reuse entries are 0 where the exit has no such module."""
    if not 0 <= k < spec.num_exits:
        raise IndexError(f"exit index {k} out of range for {spec.num_exits} exits")
    e = spec.exits[k]
    d, n = e.embed_dim, spec.num_tokens(k)
    reuse_in = spec.reuse_channels if e.feature_reuse else 0
    per_token = 3 * d * d + d * d + (d + reuse_in) * e.mlp_hidden + e.mlp_hidden * d
    blocks = e.depth * (n * per_token + 2 * n * n * d)

    feature = relation = 0
    if k > 0 and (e.feature_reuse or e.relation_reuse):
        up, n_up = spec.exits[k - 1], spec.num_tokens(k - 1)
        if e.feature_reuse:
            mlp = up.embed_dim * spec.reuse_hidden + spec.reuse_hidden * spec.reuse_channels
            feature = e.depth * n_up * mlp
        if e.relation_reuse:
            c_in, c_out = up.depth * up.num_heads, e.depth * e.num_heads
            hidden = spec.relation_expansion * c_out
            relation = n_up * n_up * (c_in * hidden + hidden * c_out)

    return {
        "stem": e.stem.macs(spec.img_size, spec.in_chans, d),
        "blocks": blocks,
        "feature_reuse": feature,
        "relation_reuse": relation,
        "head": d * spec.num_classes,
    }


def exit_macs(spec: CascadeSpec, k: int) -> int:
    """MACs of running exit ``k`` (0-based) alone, including its own reuse modules (batch 1)."""
    return sum(exit_breakdown(spec, k).values())


def stage_macs(spec: CascadeSpec) -> list[int]:
    """MACs of each exit run alone, one entry per exit."""
    return [exit_macs(spec, k) for k in range(spec.num_exits)]


def cumulative_gflops(spec: CascadeSpec) -> list[float]:
    """GMACs (1e9) of leaving at each exit: exit ``k`` pays for exits 1..k."""
    out, total = [], 0
    for macs in stage_macs(spec):
        total += macs
        out.append(total / 1e9)
    return out


def flops_table(spec: CascadeSpec) -> str:
    """A small human-readable table: exit, tokens, per-stage and cumulative GMACs."""
    rows = [f"{'exit':<18}{'tokens':>8}{'stage GMACs':>14}{'cumulative':>13}"]
    for k, (stage, cum) in enumerate(zip(stage_macs(spec), cumulative_gflops(spec), strict=False)):
        grid = spec.exits[k].grid(spec.img_size)
        rows.append(f"{spec.exit_names[k]:<18}{f'{grid}x{grid}':>8}{stage / 1e9:>14.4f}{cum:>13.4f}")
    return "\n".join(rows)
