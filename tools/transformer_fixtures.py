#!/usr/bin/env python3
"""Transformer CPU references: small torch modules that run exactly the ops transformers' eager code
runs, and what autograd saves / how many bytes are live in their training step.

Three fixtures (tiny dims: D=32, T=16, vocab 100, 2 layers; module names = Hugging Face's paths):
  gpt2_tiny   GPT2LMHeadModel, eager attention: wte + wpe (position ids arange(T)), LayerNorm,
              Conv1D c_attn / c_proj / c_fc (addmm, weight [in, out]), split + view + transpose,
              q @ k^T / torch.full([], sqrt(d)), + the additive causal mask, softmax, @ v, gelu_new,
              ln_f, lm_head tied to wte, ForCausalLMLoss (labels padded and shifted).
  llama_tiny  LlamaForCausalLM, eager attention with grouped-query attention (4 heads, 2 kv heads):
              LlamaRMSNorm's float32 composite, LlamaRotaryEmbedding + apply_rotary_pos_emb,
              repeat_kv, (q @ k^T) * scaling + mask, softmax(dtype=float32), dropout(p=0), @ v,
              SwiGLU MLP (silu(gate) * up -> down), untied lm_head, ForCausalLMLoss.
  bert_tiny   BertForMaskedLM, eager: word + position embeddings (position ids arange(T); HF slices
              a registered buffer, 8*T bytes it does not allocate), `embeddings += position`,
              LayerNorm, the extended padding mask from an all-ones attention_mask, scores / sqrt(d)
              + mask, softmax, @ v, the MLM head (dense, gelu, LayerNorm, decoder tied to the word
              embeddings + its own bias), CrossEntropyLoss over logits.view(-1, V).
  Dropout probabilities are 0 (HF's defaults are 0.1 for GPT-2/BERT): dropout(p=0) returns its input.
  BERT's token_type embeddings are left out (their indices are a buffer view: no activation bytes).
A fourth, vit_tiny (ViTForImageClassification, eager; images 3x16x16 in 4x4 patches, 17 tokens, 10 labels):
  the patch conv, flatten + transpose, the cls_token parameter expanded and concatenated, + the
  position_embeddings parameter, pre-norm layers (softmax in float32 cast back), layernorm, the
  classifier on token 0, CrossEntropyLoss; its batch is images and class indices (make_batch).

The memfit twins are tests/fixtures/transformers/NAME.memfit; tests/transformer_test.cpp
compares memfit (--pytorch 1.13) with what this script records.

Usage (repository root):
  /usr/bin/python3 tools/transformer_fixtures.py saved -o tests/reference/cpu_saved_transformers.json
  /usr/bin/python3 tools/transformer_fixtures.py live  -o tests/reference/cpu_live_transformers.json
  python3 tools/transformer_fixtures.py cuda -o OUT.json     (a lent GPU: tools/gpu-session.sh)
  /usr/bin/python3 tools/transformer_fixtures.py variants -o tests/reference/cpu_transformer_variants.json
  python3 tools/transformer_fixtures.py cuda-variants -o OUT.json   (a lent GPU: tools/gpu-session.sh)
Variants (VARIANTS below; tests/transformer_variants_test.cpp): llama_tiny / gpt2_tiny with every decoder
layer in torch.utils.checkpoint (reentrant, non-reentrant), llama_tiny with PEFT LoRA (q_proj,v_proj:
without checkpointing, non-reentrant, reentrant with enable_input_require_grads; all-linear); saved and live
bytes in one file.
Options: --batch 2 --fixtures gpt2_tiny,llama_tiny,bert_tiny --nodes (live: per autograd node)
         --variants NAME[,NAME...] (variants, cuda-variants)
"""

import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as ckpt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402
from cpu_reference import _storage  # noqa: E402  (the saved-tensor hook's storage identity)

D, T, V, LAYERS, HEADS = 32, 16, 100, 2, 4
KV_HEADS = 2          # llama_tiny: grouped-query attention, n_rep = 2
LLAMA_FFN = 64        # intermediate_size
IGNORE_INDEX = -100   # transformers loss_utils.py ForCausalLMLoss ignore_index


def causal_mask(n, t, dtype, device):
    # masking_utils.py eager_mask: a boolean causal mask made additive with torch.where (0 / dtype min)
    m = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None, None].expand(n, 1, t, t)
    return torch.where(m, torch.tensor(0.0, dtype=dtype, device=device),
                       torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device))


def for_causal_lm_loss(logits, labels):
    # transformers loss/loss_utils.py ForCausalLMLoss (num_items_in_batch None: reduction mean)
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)
    shift_labels = labels[..., 1:].contiguous()
    logits = logits.view(-1, logits.size(-1))
    shift_labels = shift_labels.view(-1)
    return F.cross_entropy(logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="mean")


def run_layer(model, layer, *args):
    """One decoder layer; one torch.utils.checkpoint call per layer when model.checkpoint_impl is set
    (variants below): transformers' gradient checkpointing, self._gradient_checkpointing_func(
    layer.__call__, hidden_states, ..., position_embeddings), with every tensor the layer reads from
    outside (hidden state, cos, sin, mask) an argument, so a reentrant call saves each of them."""
    impl = getattr(model, "checkpoint_impl", None)
    if impl is None:
        return layer(*args)
    return ckpt.checkpoint(layer, *args, use_reentrant=impl == "reentrant")


# ---------------------------------------------------------------- GPT-2
class Conv1D(nn.Module):  # transformers pytorch_utils.py Conv1D
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class NewGELU(nn.Module):  # transformers activations.py NewGELUActivation
    def forward(self, input):
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = Conv1D(3 * D, D)
        self.c_proj = Conv1D(D, D)

    def forward(self, h, mask):
        n, t, _ = h.shape
        q, k, v = self.c_attn(h).split(D, dim=2)
        shape = (n, t, -1, D // HEADS)
        q = q.view(shape).transpose(1, 2)
        k = k.view(shape).transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        # modeling_gpt2.py eager_attention_forward
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
        w = w + mask[:, :, :, : k.shape[-2]]
        w = F.softmax(w, dim=-1)
        w = w.type(v.dtype)
        o = torch.matmul(w, v)
        o = o.transpose(1, 2)
        o = o.reshape(n, t, -1).contiguous()
        return self.c_proj(o)


class GPT2MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(4 * D, D)
        self.c_proj = Conv1D(D, 4 * D)
        self.act = NewGELU()

    def forward(self, h):
        return self.c_proj(self.act(self.c_fc(h)))


class GPT2Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D, eps=1e-5)
        self.attn = GPT2Attention()
        self.ln_2 = nn.LayerNorm(D, eps=1e-5)
        self.mlp = GPT2MLP()

    def forward(self, h, mask):
        residual = h
        h = self.attn(self.ln_1(h), mask)
        h = h + residual
        residual = h
        h = self.mlp(self.ln_2(h))
        return residual + h


class GPT2Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V, D)
        self.wpe = nn.Embedding(T, D)
        self.h = nn.ModuleList([GPT2Block() for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(D, eps=1e-5)

    def forward(self, ids):
        n, t = ids.shape
        position_ids = torch.arange(0, t, dtype=torch.long, device=ids.device).unsqueeze(0)
        h = self.wte(ids) + self.wpe(position_ids)
        mask = causal_mask(n, t, h.dtype, h.device)
        for block in self.h:
            h = run_layer(self, block, h, mask)
        return self.ln_f(h)


class GPT2LMHeadModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = GPT2Model()
        self.lm_head = nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tie_weights

    def forward(self, ids):
        return self.lm_head(self.transformer(ids))

    loss = staticmethod(for_causal_lm_loss)


# ---------------------------------------------------------------- Llama
class LlamaRMSNorm(nn.Module):  # modeling_llama.py
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_scaling = 1.0

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LlamaAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = D // HEADS
        self.num_key_value_groups = HEADS // KV_HEADS
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(D, HEADS * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, KV_HEADS * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, KV_HEADS * self.head_dim, bias=False)
        self.o_proj = nn.Linear(HEADS * self.head_dim, D, bias=False)

    def forward(self, h, cos, sin, mask):
        input_shape = h.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(h).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(h).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(h).view(hidden_shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        # modeling_llama.py eager_attention_forward
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        w = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        w = w + mask[:, :, :, : k.shape[-2]]
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = F.dropout(w, p=0.0, training=self.training)
        o = torch.matmul(w, v)
        o = o.transpose(1, 2).contiguous()
        o = o.reshape(*input_shape, -1).contiguous()
        return self.o_proj(o)


class LlamaMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(D, LLAMA_FFN, bias=False)
        self.up_proj = nn.Linear(D, LLAMA_FFN, bias=False)
        self.down_proj = nn.Linear(LLAMA_FFN, D, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = LlamaAttention()
        self.mlp = LlamaMLP()
        self.input_layernorm = LlamaRMSNorm(D)
        self.post_attention_layernorm = LlamaRMSNorm(D)

    def forward(self, h, cos, sin, mask):
        residual = h
        h = self.input_layernorm(h)
        h = self.self_attn(h, cos, sin, mask)
        h = residual + h
        residual = h
        h = self.post_attention_layernorm(h)
        h = self.mlp(h)
        return residual + h


class LlamaModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, D)
        self.layers = nn.ModuleList([LlamaDecoderLayer() for _ in range(LAYERS)])
        self.norm = LlamaRMSNorm(D)
        self.rotary_emb = LlamaRotaryEmbedding(D // HEADS)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        cache_position = torch.arange(0, h.shape[1], device=h.device)
        position_ids = cache_position.unsqueeze(0)
        mask = causal_mask(h.shape[0], h.shape[1], h.dtype, h.device)
        cos, sin = self.rotary_emb(h, position_ids)
        for layer in self.layers:
            h = run_layer(self, layer, h, cos, sin, mask)
        return self.norm(h)


class LlamaForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = LlamaModel()
        self.lm_head = nn.Linear(D, V, bias=False)

    def forward(self, ids):
        h = self.model(ids)
        return self.lm_head(h[:, slice(0, None), :])  # logits_to_keep=0

    loss = staticmethod(for_causal_lm_loss)


# ---------------------------------------------------------------- BERT
class BertEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(V, D, padding_idx=0)
        self.position_embeddings = nn.Embedding(T, D)
        self.LayerNorm = nn.LayerNorm(D, eps=1e-12)

    def forward(self, ids):
        position_ids = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        embeddings = self.word_embeddings(ids)
        embeddings += self.position_embeddings(position_ids)
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = D // HEADS
        self.query = nn.Linear(D, D)
        self.key = nn.Linear(D, D)
        self.value = nn.Linear(D, D)

    def split(self, x):
        return x.view(x.size()[:-1] + (HEADS, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, h, mask):
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / math.sqrt(self.head_dim)
        scores = scores + mask
        probs = F.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v)
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size()[:-2] + (D,))


class BertSelfOutput(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.dense = nn.Linear(d_in, D)
        self.LayerNorm = nn.LayerNorm(D, eps=1e-12)

    def forward(self, h, input_tensor):
        return self.LayerNorm(self.dense(h) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertSelfOutput(D)

    def forward(self, h, mask):
        return self.output(self.self(h, mask), h)


class BertIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(D, 4 * D)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, h):
        return self.intermediate_act_fn(self.dense(h))


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertSelfOutput(4 * D)

    def forward(self, h, mask):
        a = self.attention(h, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer() for _ in range(LAYERS)])

    def forward(self, h, mask):
        for layer in self.layer:
            h = layer(h, mask)
        return h


class BertModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()

    def forward(self, ids):
        n, t = ids.shape
        # modeling_bert.py: attention_mask = ones; get_extended_attention_mask: (1 - m[:, None, None, :]) * min
        attention_mask = torch.ones((n, t), device=ids.device)
        ext = attention_mask[:, None, None, :].to(dtype=torch.float32)
        ext = (1.0 - ext) * torch.finfo(torch.float32).min
        return self.encoder(self.embeddings(ids), ext)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(D, D)
        self.transform_act_fn = nn.GELU()
        self.LayerNorm = nn.LayerNorm(D, eps=1e-12)

    def forward(self, h):
        return self.LayerNorm(self.transform_act_fn(self.dense(h)))


class BertLMPredictionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.transform = BertPredictionHeadTransform()
        self.decoder = nn.Linear(D, V, bias=False)
        self.bias = nn.Parameter(torch.zeros(V))
        self.decoder.bias = self.bias

    def forward(self, h):
        return self.decoder(self.transform(h))


class BertOnlyMLMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.predictions = BertLMPredictionHead()

    def forward(self, h):
        return self.predictions(h)


class BertForMaskedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel()
        self.cls = BertOnlyMLMHead()
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tie_weights

    def forward(self, ids):
        return self.cls(self.bert(ids))

    @staticmethod
    def loss(scores, labels):
        return nn.CrossEntropyLoss()(scores.view(-1, V), labels.view(-1))


# ---------------------------------------------------------------- ViT
# ViTForImageClassification as transformers' modeling_vit.py runs it eagerly (ViTEmbeddings,
# ViTPatchEmbeddings, eager_attention_forward, ViTLayer, ViTForImageClassification): the patch conv,
# flatten(2).transpose(1, 2), cls_token (an nn.Parameter [1, 1, D]) expanded to the batch and
# concatenated in front, + position_embeddings (an nn.Parameter [1, tokens, D], broadcast over the
# batch), pre-norm layers, the final layernorm, the classifier on token 0, CrossEntropyLoss.
VIT_IMAGE, VIT_PATCH, VIT_CHANNELS, VIT_LABELS = 16, 4, 3, 10
VIT_TOKENS = (VIT_IMAGE // VIT_PATCH) ** 2 + 1  # 16 patches + [CLS]
VIT_FFN = 4 * D                                   # intermediate_size


class ViTPatchEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.projection = nn.Conv2d(VIT_CHANNELS, D, kernel_size=VIT_PATCH, stride=VIT_PATCH)

    def forward(self, pixel_values):
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.patch_embeddings = ViTPatchEmbeddings()
        self.position_embeddings = nn.Parameter(torch.randn(1, VIT_TOKENS, D))
        self.dropout = nn.Dropout(0.0)  # hidden_dropout_prob 0: F.dropout returns its input

    def forward(self, pixel_values):
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


def vit_eager_attention_forward(module, query, key, value, scaling):
    # modeling_vit.py eager_attention_forward (no head mask, dropout 0)
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=0.0, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous()


class ViTSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = D // HEADS
        self.query = nn.Linear(D, D, bias=True)  # qkv_bias
        self.key = nn.Linear(D, D, bias=True)
        self.value = nn.Linear(D, D, bias=True)
        self.scaling = self.head_dim ** -0.5

    def transpose_for_scores(self, x):
        return x.view(x.size()[:-1] + (HEADS, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, h):
        k = self.transpose_for_scores(self.key(h))
        v = self.transpose_for_scores(self.value(h))
        q = self.transpose_for_scores(self.query(h))
        ctx = vit_eager_attention_forward(self, q, k, v, self.scaling)
        return ctx.view(ctx.size()[:-2] + (D,))


class ViTSelfOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(D, D)
        self.dropout = nn.Dropout(0.0)

    def forward(self, h):
        return self.dropout(self.dense(h))


class ViTAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = ViTSelfAttention()
        self.output = ViTSelfOutput()

    def forward(self, h):
        return self.output(self.attention(h))


class ViTIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(D, VIT_FFN)
        self.intermediate_act_fn = nn.GELU()  # ACT2FN["gelu"]: exact GELU

    def forward(self, h):
        return self.intermediate_act_fn(self.dense(h))


class ViTOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(VIT_FFN, D)
        self.dropout = nn.Dropout(0.0)

    def forward(self, h, input_tensor):
        return self.dropout(self.dense(h)) + input_tensor


class ViTLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = ViTAttention()
        self.intermediate = ViTIntermediate()
        self.output = ViTOutput()
        self.layernorm_before = nn.LayerNorm(D, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(D, eps=1e-12)

    def forward(self, h):
        attention_output = self.attention(self.layernorm_before(h))
        h = attention_output + h
        return self.output(self.intermediate(self.layernorm_after(h)), h)


class ViTEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([ViTLayer() for _ in range(LAYERS)])

    def forward(self, h):
        for layer in self.layer:
            h = layer(h)
        return h


class ViTModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = ViTEmbeddings()
        self.encoder = ViTEncoder()
        self.layernorm = nn.LayerNorm(D, eps=1e-12)

    def forward(self, pixel_values):
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))


class ViTForImageClassification(nn.Module):
    def __init__(self):
        super().__init__()
        self.vit = ViTModel()  # add_pooling_layer=False
        self.classifier = nn.Linear(D, VIT_LABELS)

    def forward(self, pixel_values):
        sequence_output = self.vit(pixel_values)
        return self.classifier(sequence_output[:, 0, :])

    @staticmethod
    def loss(logits, labels):  # single_label_classification
        return nn.CrossEntropyLoss()(logits.view(-1, VIT_LABELS), labels.view(-1))

    @staticmethod
    def make_batch(batch, g, device="cpu"):  # pixel_values [N, 3, H, W] and class indices [N]
        pixels = torch.randn(batch, VIT_CHANNELS, VIT_IMAGE, VIT_IMAGE, generator=g).to(device)
        labels = torch.randint(0, VIT_LABELS, (batch,), generator=g).to(device)
        return pixels, labels


FIXTURES = {"gpt2_tiny": GPT2LMHeadModel, "llama_tiny": LlamaForCausalLM, "bert_tiny": BertForMaskedLM}
FIXTURES["vit_tiny"] = ViTForImageClassification


def build(name, seed=0, device="cpu"):
    torch.manual_seed(seed)
    net = FIXTURES[name]().to(device)
    net.train()
    g = torch.Generator().manual_seed(seed)
    return net, g


def make_batch(batch, g, device="cpu", name=None):
    if name is not None and hasattr(FIXTURES[name], "make_batch"):  # vit_tiny: images and class labels
        return FIXTURES[name].make_batch(batch, g, device)
    ids = torch.randint(1, V, (batch, T), generator=g).to(device)
    labels = torch.randint(0, V, (batch, T), generator=g).to(device)
    return ids, labels


def count_params(net):
    seen, n = set(), 0
    for p in net.parameters():  # net.parameters() yields a tied tensor once
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def measure_saved(name, batch, seed, variant=None):
    net, g = build_variant(variant, seed) if variant else build(name, seed)
    ids, labels = make_batch(batch, g, name=VARIANTS[variant]["fixture"] if variant else name)
    param_ptrs = {_storage(p)[0] for p in net.parameters()} | {_storage(b)[0] for b in net.buffers()}
    input_ptrs = {_storage(ids)[0], _storage(labels)[0]}
    stack = ["(outside)"]
    per_module = {}
    handles = []
    for mname, mod in net.named_modules():
        if mname and not list(mod.children()):
            handles.append(mod.register_forward_pre_hook(lambda m, i, n=mname: stack.append(n) and None))
            handles.append(mod.register_forward_hook(lambda m, i, o: stack.pop() and None))
    seen = {}
    entries = []

    def pack(t):
        ptr, nbytes = _storage(t)
        key = (ptr, nbytes)
        first = key not in seen
        if first:
            seen[key] = len(seen)
        e = {"module": stack[-1], "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
             "bytes": nbytes, "storage_id": seen[key], "is_param": ptr in param_ptrs, "is_input": ptr in input_ptrs,
             # a Python number wrapped as a 0-d float64 tensor (0.5 * x): a CPU scalar on CUDA too
             "cpu_scalar": t.dim() == 0 and t.dtype == torch.float64, "first": first}
        entries.append(e)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(ids)
        loss = net.loss(out, labels)
    for h in handles:
        h.remove()
    loss.backward()
    def counted(e):
        return e["first"] and not e["is_param"] and not e["is_input"] and not e["cpu_scalar"]
    total = sum(e["bytes"] for e in entries if counted(e))
    # CPU dropout (p > 0, LoRA's lora_dropout) saves a float32 noise tensor where CUDA saves a bool mask
    noise = sum(math.prod(e["shape"]) for e in entries
                if counted(e) and e["module"].endswith("dropout") and e["dtype"] == "float32")
    scalars = sum(e["bytes"] for e in entries if e["first"] and e["cpu_scalar"])
    inputs = sum(e["bytes"] for e in entries if e["first"] and e["is_input"])
    for e in entries:
        if counted(e):
            per_module[e["module"]] = per_module.get(e["module"], 0) + e["bytes"]
    return {"name": name, "batch": batch, "params": count_params(net),
            "param_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in net.buffers()),
            **({"trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
                "saved_dropout_noise_elements": noise} if variant else {}),
            "saved_total_bytes": total, "saved_input_bytes": inputs, "saved_cpu_scalar_bytes": scalars, "first_saved_bytes_by_module": per_module,
            "saved": entries, "loss": round(float(loss.detach()), 5)}


def measure_live(name, batch, seed, opt_name, impl, want_nodes, want_ops=False, variant=None):
    from torch.profiler import ProfilerActivity, profile
    import cpu_live_reference as clr
    net, g = build_variant(variant, seed) if variant else build(name, seed)
    ids, labels = make_batch(batch, g, name=VARIANTS[variant]["fixture"] if variant else name)
    opt = mt.make_optimizer(opt_name, net.parameters(), impl)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(clr.N_ITERATIONS):
            mt.training_step(net, ids, labels, opt, net.loss)
    its, end_bytes, timeline = clr.analyse(prof.profiler.kineto_results, want_nodes)
    base = its[0]["start_bytes"]
    for r in its:
        r["relative_peak_bytes"] = r["peak_bytes"] - base
        r["relative_start_bytes"] = r["start_bytes"] - base
    params = list(net.parameters())
    res = {"optimizer": opt_name, "optimizer_impl": impl,
           "param_bytes": sum(p.numel() * p.element_size() for p in params), "param_tensors": len(params),
           **({"trainable_param_tensors": sum(p.requires_grad for p in params)} if variant else {}),
           "grad_bytes_after": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
           "optimizer_state_bytes_after": sum(v.numel() * v.element_size() for st in opt.state.values()
                                              for v in st.values() if torch.is_tensor(v)),
           "iterations": its}
    if want_nodes:
        pre = "autograd::engine::evaluate_function: "
        res["backward_nodes"] = [[u["op"][len(pre):], u["start"] - base, u["max"] - base, u["end"] - base]
                                 for u in timeline if u["iteration"] == clr.N_ITERATIONS and u["op"].startswith(pre)]
        if want_ops:  # every top-level op too (large; for investigating)
            res["ops"] = [[u["phase"], u["op"], u["start"] - base, u["max"] - base, u["end"] - base]
                          for u in timeline if u["iteration"] == clr.N_ITERATIONS]
    return res


def measure_cuda(name, batch, seed, opt_name, impl, variant=None):
    net, g = build_variant(variant, seed, "cuda") if variant else build(name, seed, "cuda")
    ids, labels = make_batch(batch, g, "cuda", VARIANTS[variant]["fixture"] if variant else name)
    opt = mt.make_optimizer(opt_name, net.parameters(), impl)
    torch.cuda.synchronize()
    its = []
    for k in range(3):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        mt.training_step(net, ids, labels, opt, net.loss)
        torch.cuda.synchronize()
        its.append({"iteration": k + 1, "start_bytes": start, "max_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "max_reserved_bytes": torch.cuda.max_memory_reserved()})
    return {"optimizer": opt_name, "optimizer_impl": impl, "iterations": its}


# ---------------------------------------------------------------- variants: checkpointing, LoRA
# tests/reference/cpu_transformer_variants.json (mode `variants`), checked by
# tests/transformer_variants_test.cpp with memfit's --checkpoint / --checkpoint-impl / --lora.
# checkpoint: every decoder layer one torch.utils.checkpoint call (run_layer), preserve_rng_state left
# True (as transformers' gradient_checkpointing_enable). lora: tools/lora_fixtures.py's LoraLinear (PEFT
# lora.Linear.forward) on the targets, every other parameter frozen (mark_only_lora_as_trainable).
# The reentrant call needs an input that requires grad: the embedding output does in full fine-tuning; under
# LoRA (frozen embeddings) PEFT calls transformers' model.enable_input_require_grads() (peft_model.py
# _prepare_model_for_gradient_checkpointing), a forward hook on get_input_embeddings() doing
# output.requires_grad_(True) (modeling_utils.py): "input_require_grads" below.
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {
    "llama_tiny+ckpt_reentrant": {"fixture": "llama_tiny", "checkpoint": "model.layers.*", "checkpoint_impl": "reentrant"},
    "llama_tiny+ckpt_non_reentrant": {"fixture": "llama_tiny", "checkpoint": "model.layers.*",
                                      "checkpoint_impl": "non-reentrant"},
    "gpt2_tiny+ckpt_reentrant": {"fixture": "gpt2_tiny", "checkpoint": "transformer.h.*", "checkpoint_impl": "reentrant"},
    "gpt2_tiny+ckpt_non_reentrant": {"fixture": "gpt2_tiny", "checkpoint": "transformer.h.*",
                                     "checkpoint_impl": "non-reentrant"},
    "llama_tiny+lora_qv": {"fixture": "llama_tiny", "lora": "r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj",
                           "lora_targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16.0, "dropout": 0.05},
    "llama_tiny+lora_qv+ckpt_non_reentrant": {"fixture": "llama_tiny", "checkpoint": "model.layers.*",
                                              "checkpoint_impl": "non-reentrant",
                                              "lora": "r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj",
                                              "lora_targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16.0,
                                              "dropout": 0.05},
    "llama_tiny+lora_qv+ckpt_reentrant": {"fixture": "llama_tiny", "checkpoint": "model.layers.*",
                                          "checkpoint_impl": "reentrant", "input_require_grads": True,
                                          "lora": "r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj",
                                          "lora_targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16.0, "dropout": 0.05},
    # all-linear: PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND, every nn.Linear but the output head
    "llama_tiny+lora_all": {"fixture": "llama_tiny", "lora": "r=4,alpha=8,targets=all-linear",
                            "lora_targets": LLAMA_LINEARS, "r": 4, "alpha": 8.0, "dropout": 0.0},
}


def build_variant(vname, seed, device="cpu"):
    v = VARIANTS[vname]
    net, g = build(v["fixture"], seed, device)
    if "lora" in v:
        from lora_fixtures import LoraLinear
        # PEFT check_target_module_exists: the module name ends in "." + target
        for name, mod in list(net.named_modules()):
            if isinstance(mod, nn.Linear) and any(name.endswith("." + t) for t in v["lora_targets"]):
                parent_name, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent_name), child, LoraLinear(mod, v["r"], v["alpha"], v["dropout"]).to(device))
        for n, p in net.named_parameters():
            p.requires_grad_("lora_" in n)
        net.train()
    if v.get("input_require_grads"):
        # modeling_utils.py enable_input_require_grads: make_inputs_require_grads(module, input, output)
        net.model.embed_tokens.register_forward_hook(lambda module, inp, out: out.requires_grad_(True))
    if "checkpoint_impl" in v:
        (net.model if v["fixture"] == "llama_tiny" else net.transformer).checkpoint_impl = v["checkpoint_impl"]
    return net, g


def variants_main(args, configs):
    names = [n for n in (args.variants.split(",") if args.variants else VARIANTS) if n]
    result = {"generated_by": " ".join(["python3"] + sys.argv), "torch_version": torch.__version__,
              "dims": {"D": D, "T": T, "V": V, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                       "llama_ffn": LLAMA_FFN},
              "notes": ["tools/transformer_fixtures.py VARIANTS: the fixtures with every decoder layer in a "
                        "torch.utils.checkpoint call and/or PEFT LoRA (tools/lora_fixtures.py LoraLinear).",
                        "saved: saved_tensors_hooks around forward + loss, as mode `saved` (the outer graph only "
                        "under checkpointing: a reentrant call saves its inputs, a non-reentrant call's own "
                        "hooks replace the outer ones).",
                        "live: as mode `live` (torch.profiler, 1 thread, 3 iterations)."],
              "variants": []}
    for vn in names:
        v = dict(VARIANTS[vn])
        entry = {"name": vn, "fixture": v["fixture"], "twin": "tests/fixtures/transformers/%s.memfit" % v["fixture"],
                 "checkpoint": v.get("checkpoint"), "checkpoint_impl": v.get("checkpoint_impl"), "lora": v.get("lora"),
                 "input_require_grads": bool(v.get("input_require_grads")),
                 "batch": args.batch}
        runs = []
        for opt_name, impl in configs:
            if args.mode == "variants":
                runs.append(measure_live(vn, args.batch, args.seed, opt_name, impl, args.nodes, args.ops, variant=vn))
            else:
                runs.append(measure_cuda(vn, args.batch, args.seed, opt_name, impl, variant=vn))
        if args.mode == "variants":
            saved = measure_saved(vn, args.batch, args.seed, variant=vn)
            saved.pop("saved")  # per-entry list: large, and the totals are what is compared
            entry["saved"] = saved
        entry["runs"] = runs
        result["variants"].append(entry)
    mt.write_json(result, args.output)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["saved", "live", "cuda", "variants", "cuda-variants"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixtures", default=",".join(FIXTURES))
    ap.add_argument("--configs", default="sgd:foreach,adam:foreach,adam:for-loop")
    ap.add_argument("--nodes", action="store_true", help="live: the last iteration's autograd nodes [op, start, max, end]")
    ap.add_argument("--ops", action="store_true", help="live, with --nodes: every top-level op as well")
    ap.add_argument("--variants", help="variants / cuda-variants: names from VARIANTS (default all)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mode in ("variants", "cuda-variants"):
        return variants_main(args, [c.split(":") for c in args.configs.split(",") if c])
    names = [n for n in args.fixtures.split(",") if n]
    result = {"generated_by": " ".join(["python3"] + sys.argv), "torch_version": torch.__version__,
              "dims": {"D": D, "T": T, "V": V, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                       "llama_ffn": LLAMA_FFN},
              "twins": {n: "tests/fixtures/transformers/%s.memfit" % n for n in names}, "fixtures": []}
    configs = [c.split(":") for c in args.configs.split(",") if c]
    for n in names:
        if args.mode == "saved":
            result["fixtures"].append(measure_saved(n, args.batch, args.seed))
        else:
            runs = []
            for opt_name, impl in configs:
                if args.mode == "live":
                    runs.append(measure_live(n, args.batch, args.seed, opt_name, impl, args.nodes, args.ops))
                else:
                    runs.append(measure_cuda(n, args.batch, args.seed, opt_name, impl))
            result["fixtures"].append({"name": n, "batch": args.batch, "runs": runs})
    mt.write_json(result, args.output)


if __name__ == "__main__":
    main()
