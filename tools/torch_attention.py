"""A drop-in attention processor for diffusers' `Attention` on the CPU torch 1.13 shipped by Debian.

nn.Linear on a 3-D input goes through a batched-matmul path that runs at ~3 GFLOP/s here, so this
processor projects on 2-D views. The math is exactly diffusers' AttnProcessor (group norm, q/k/v,
softmax(q k^T * scale) v, out projection, residual, / rescale_output_factor); only memory views differ.
"""
import torch


class FlatAttnProcessor:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, scale=1.0):
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        hs = attn.group_norm(hidden_states) if attn.group_norm is not None else hidden_states
        hs = hs.reshape(b, c, h * w).transpose(1, 2).reshape(b * h * w, c)
        q, k, v = attn.to_q(hs), attn.to_k(hs), attn.to_v(hs)
        heads = attn.heads
        d = q.shape[1] // heads

        def split(x):
            return x.reshape(b, h * w, heads, d).permute(0, 2, 1, 3).reshape(b * heads, h * w, d)

        q, k, v = split(q), split(k), split(v)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * attn.scale, dim=-1)
        o = torch.bmm(p, v).reshape(b, heads, h * w, d).permute(0, 2, 1, 3).reshape(b * h * w, heads * d)
        o = attn.to_out[1](attn.to_out[0](o))
        o = o.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            o = o + residual
        return o / attn.rescale_output_factor


def install_fast_attention(model):
    for m in model.modules():
        if hasattr(m, "set_processor"):
            m.set_processor(FlatAttnProcessor())
    return model


class BmmAttnProcessor:
    """diffusers' AttnProcessor math for every `Attention` use in UNet2DConditionModel / VQModel / UNet2DModel:
    4-D (spatial, with group norm) or 3-D (sequence) input, self- or cross-attention (one or more context
    tokens), no mask. Scores are bmm(q, k^T) * scale instead of AttnProcessor's
    baddbmm(torch.empty(...), q, k^T, beta=0, alpha=scale): on Debian's CPU torch 1.13 that baddbmm lets NaNs
    from the uninitialized `empty` buffer through for some shapes (e.g. a 1-token context), so the default
    processor gives sporadic NaN outputs. Projections run on 2-D views (see FlatAttnProcessor)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None or attn.spatial_norm is not None:
            raise NotImplementedError("BmmAttnProcessor: attention masks and spatial norm are not supported")
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        b, n, c = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        m = ctx.shape[1]
        q = attn.to_q(hidden_states.reshape(b * n, c))
        ctx2 = ctx.reshape(b * m, ctx.shape[2])
        k, v = attn.to_k(ctx2), attn.to_v(ctx2)
        heads = attn.heads
        d = q.shape[1] // heads

        def split(x, length):
            return x.reshape(b, length, heads, d).permute(0, 2, 1, 3).reshape(b * heads, length, d)

        q, k, v = split(q, n), split(k, m), split(v, m)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * attn.scale, dim=-1)
        o = torch.bmm(p, v).reshape(b, heads, n, d).permute(0, 2, 1, 3).reshape(b * n, heads * d)
        o = attn.to_out[1](attn.to_out[0](o)).reshape(b, n, -1)
        if spatial:
            o = o.transpose(1, 2).reshape(b, -1, h, w)
        if attn.residual_connection:
            o = o + residual
        return o / attn.rescale_output_factor


def install_bmm_attention(model):
    for m in model.modules():
        if hasattr(m, "set_processor"):
            m.set_processor(BmmAttnProcessor())
    return model
