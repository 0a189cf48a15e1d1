"""DeiT/ViT patch embedding, computed as reshape + matmul when kernel == stride."""

from __future__ import annotations

from mindspore import Parameter, nn, ops

from .init import torch_default_uniform


class PatchProjection(nn.Cell):
    """A Conv2d with torch's parameter layout (``weight`` [D, C, k, k], ``bias`` [D]).

    Non-overlapping kernels (kernel == stride, the DeiT case, also with padding as in the 23/23/pad-3
    exit) are computed as patchify + matmul, which is exact and far faster than a big-kernel conv on
    CPU; other kernels fall back to a convolution. Returns tokens [B, grid*grid, D].
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int, padding: int, img_size: int):
        super().__init__()
        fan_in = in_chans * kernel * kernel
        self.weight = Parameter(torch_default_uniform((embed_dim, in_chans, kernel, kernel), fan_in), name="weight")
        self.bias = Parameter(torch_default_uniform((embed_dim,), fan_in), name="bias")
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.grid = (img_size + 2 * padding - kernel) // stride + 1
        self.patchify = kernel == stride
        self.crop = img_size + 2 * padding != self.grid * kernel  # pixels past the last whole patch
        self.project = ops.MatMul(transpose_b=True)

    def construct(self, x):
        k, g, p = self.kernel, self.grid, self.padding
        if p > 0:
            x = ops.pad(x, (p, p, p, p))
        if self.patchify:
            if self.crop:
                x = x[:, :, : g * k, : g * k]
            x = x.reshape(-1, self.in_chans, g, k, g, k).transpose(0, 2, 4, 1, 3, 5)
            # A 2-D MatMul: a 3-D x 2-D matmul broadcasts the weight to every image first on CPU.
            x = x.reshape(-1, self.in_chans * k * k)
            w = self.weight.reshape(self.embed_dim, -1).astype(x.dtype)
            y = self.project(x, w) + self.bias.astype(x.dtype)
            return y.reshape(-1, g * g, self.embed_dim)
        y = ops.conv2d(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype), stride=self.stride)
        return y.reshape(-1, self.embed_dim, g * g).swapaxes(1, 2)


class PatchEmbed(nn.Cell):
    """Image -> patch tokens. Holds ``proj`` so that names read ``patch_embed.proj.weight``."""

    def __init__(self, img_size: int, in_chans: int, embed_dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.proj = PatchProjection(in_chans, embed_dim, kernel, stride, padding, img_size)
        self.grid = self.proj.grid

    def construct(self, x):
        return self.proj(x)
