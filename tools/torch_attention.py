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
