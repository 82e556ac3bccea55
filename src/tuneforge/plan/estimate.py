"""The plan's arithmetic: bytes per memory component and seconds per step, from shapes and counts only.

Everything here is plain arithmetic on ``Arch`` / ``ParamStats`` (``tuneforge.plan.model``) and a
``Setup`` (what the recipe asks of one process), so it can be checked by hand; docs/plan.md derives
each formula. All sizes are per process.

Activations. A transformer block keeps, for the backward pass, the tensors its ops need to compute
gradients; which ones is known from the ops (checked against ``torch.autograd.graph.saved_tensors_hooks``
on small models of each layout in tests/unit/test_plan.py). Per token of a block, with ``a`` the
compute dtype's bytes (2 under bf16/fp16 autocast, 4 in fp32), ``h`` hidden, ``f`` intermediate,
``q``/``kv`` the query and key/value widths:

- norms: LayerNorm keeps its fp32 input (4h each); transformers' RMSNorm its fp32 input and the
  normalised product (8h each); the residual stream stays fp32 under autocast;
- attention: the kernel keeps q, k, v and its output, ``a(2q + 2kv)``; eager attention (and SDPA in
  training with attention dropout, which falls back to the math kernel) also keeps the scores:
  ``heads x seq`` values per token, 4 bytes in fp32 (softmax output), 6 under autocast (fp32 softmax
  output + its bf16 copy), 12 with attention dropout (mask and dropped probabilities as well);
- MLP: GELU keeps its input (a f); a gated MLP keeps gate, act(gate) and up (3 a f);
- linear layers keep their input when their weight (or a LoRA adapter on them) trains: in fp32 the
  layers reading one tensor share it; under autocast each makes its own bf16 copy of an fp32 input
  (q, k and v: three copies); a frozen layer without an adapter keeps none; LoRA dropout keeps its
  mask (in the input's dtype) and the dropped copy;
- hidden dropout keeps a mask per dropout (2 per block, in the dense output's dtype); GPT-2's blocks
  keep two more ``a h`` tensors (its Conv1D projections read reshaped copies).

Blocks before the first trainable parameter keep nothing. Gradient checkpointing keeps only each
block's fp32 input (4h) and recomputes one block at a time in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tuneforge.plan.model import Arch, LayerLinears, ParamStats

GB = 1e9
#: Roles whose input is a norm's fp32 output (autocast casts it once per reading layer); the others
#: read a tensor already in the compute dtype.
_FP32_INPUT_ROLES = ("qkv", "up")
#: Bytes per 4-bit weight: the packed nibble plus one fp32 absmax per 64-weight block (bitsandbytes
#: NF4/FP4 without double quantisation; with it, an 8-bit absmax and one fp32 per 256 blocks).
BYTES_4BIT = 0.5 + 4 / 64
BYTES_4BIT_DOUBLE_QUANT = 0.5 + 1 / 64 + 4 / (64 * 256)
#: 8-bit (LLM.int8): one byte per weight; the per-row fp32 scales are negligible.
BYTES_8BIT = 1.0


@dataclass(frozen=True)
class Setup:
    """What one process does in a training step, as the recipe and the machine decide it."""

    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype (master weights stay fp32)
    device: str = "cpu"  # cpu | cuda
    micro_batch: int = 1  # examples per process per micro-batch
    seq_peak: int = 128  # padded length of the longest micro-batch (memory)
    seq_mean: float = 128.0  # mean padded length of a micro-batch (time)
    accumulation: int = 1
    label_kind: str = "class"
    labelled_fraction: float = 1.0  # share of positions with a label (vocabulary-wide kinds)
    num_labels: int = 2
    checkpointing: bool = False
    optimizer: str = "adamw"
    momentum: float = 0.9
    quantize_bits: int | None = None
    double_quant: bool = False
    processes: int = 1
    shard: str = "none"  # none | zero2 | zero3 | fsdp
    loss_chunk_rows: int | None = None  # tuneforge.tasks.losses.LOSS_CHUNK_ROWS, when the chunked loss exists
    steady_at_peak: bool = True  # most micro-batches are as long as the longest (packed or length-capped data)
    threads: int = 1  # CPU threads of the process (the per-element costs are per thread)
    eval_batch: int = 64
    eval_auto: bool = False  # train.eval_batch_size auto: the run sizes it to the memory left (never the peak)
    eval_seq: int = 128
    generation: tuple[int, int, int] | None = None  # (batch, prompt tokens, new tokens) of generation-based eval

    @property
    def act_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def peak_tokens(self) -> int:
        return self.micro_batch * self.seq_peak


@dataclass(frozen=True)
class Calibration:
    """The measured constants of the plan (docs/plan.md says where each number comes from)."""

    framework_bytes: float  # RSS (CPU) / context + allocator reserve (CUDA) before the model exists
    workspace_factor: float  # backward working memory beyond the kept activations, in largest blocks
    mfu: float  # achievable share of the matmul peak for the model's FLOPs (bf16/fp16 autocast)
    mfu_fp32: float | None = None  # ... in fp32 (None: as mfu); fp32 kernels get closer to their lower peak
    allocator_retention: float = 0.0  # CPU: heap kept by malloc, as a share of a step's activation volume
    bandwidth: float | None = None  # bytes/s at which the memory-bound ops go through the kept activations
    step_overhead_s: float = 0.0  # fixed seconds per optimizer step (Python, the loop, the optimizer call)
    dropout_s_per_element: float = 0.0  # one thread: a dropout mask value drawn and applied (RNG-bound)
    logit_s_per_element: float = 0.0  # one thread: a vocabulary logit through the fp32 loss, forward + backward
    chunked_logit_s_per_element: float = 0.0  # ... on the chunked path (labelled rows only, recomputed)
    source: str = ""


@dataclass
class Estimate:
    """The plan of one recipe: bytes per component (per phase) and seconds."""

    components: dict[str, float]  # training-step peak, by component (bytes)
    eval_components: dict[str, float]  # at setup.eval_batch (with eval_auto: informative, not in ``peak``)
    generation_components: dict[str, float]
    flops_per_step: float
    step_seconds: float | None
    steps: int | None
    notes: list[str] = field(default_factory=list)
    eval_auto: bool = False

    @property
    def train_peak(self) -> float:
        return sum(self.components.values())

    @property
    def eval_peak(self) -> float:
        return sum(self.eval_components.values())

    @property
    def generation_peak(self) -> float:
        return sum(self.generation_components.values())

    def _phases(self) -> dict[str, float]:
        phases = {"training": self.train_peak, "generation": self.generation_peak}
        if not self.eval_auto:  # an automatic evaluation batch is sized to what the training left
            phases["evaluation"] = self.eval_peak
        return phases

    @property
    def peak(self) -> float:
        return max(self._phases().values())

    @property
    def peak_phase(self) -> str:
        phases = self._phases()
        return max(phases, key=phases.get)

    @property
    def total_seconds(self) -> float | None:
        if self.step_seconds is None or self.steps is None:
            return None
        return self.step_seconds * self.steps


# --------------------------------------------------------------------------------------- parameters

def weight_bytes(params: ParamStats, setup: Setup) -> float:
    """Master weights: fp32 (autocast computes in bf16/fp16 from fp32 weights); a quantised base stores
    its frozen linear weights in 4 or 8 bits."""
    if not setup.quantize_bits:
        return 4.0 * params.total
    per = BYTES_8BIT if setup.quantize_bits == 8 else (
        BYTES_4BIT_DOUBLE_QUANT if setup.double_quant else BYTES_4BIT)
    return 4.0 * (params.total - params.quantizable) + per * params.quantizable


def autocast_copy_bytes(params: ParamStats, setup: Setup) -> float:
    """Under autocast every matmul weight a gradient passes through is cast to bf16/fp16 and the copy is
    kept for the backward pass (trainable ones in autocast's cache, frozen ones by the op that needs them
    for the input gradient). A quantised weight is dequantised again in the backward pass instead."""
    if setup.precision == "fp32":
        return 0.0
    matmuls = params.matmul_grad_path - (params.quantizable if setup.quantize_bits else 0)
    return 2.0 * max(matmuls, 0)


def gradient_bytes(params: ParamStats) -> float:
    return 4.0 * params.trainable


def optimizer_bytes(params: ParamStats, setup: Setup) -> float:
    """AdamW: two fp32 moments; SGD: one momentum buffer (none without momentum); Adafactor: the factored
    second moment; an 8-bit optimizer (name containing 8bit): two 1-byte moments."""
    name = setup.optimizer.lower()
    if "8bit" in name:
        return 2.0 * params.trainable
    if name == "sgd":
        return 4.0 * params.trainable if setup.momentum > 0 else 0.0
    if name == "adafactor":
        return 4.0 * params.adafactor_state
    return 8.0 * params.trainable


def sharded(components: dict[str, float], setup: Setup) -> dict[str, float]:
    """ZeRO-2 splits gradients and optimizer state over the processes; ZeRO-3 / FSDP the weights too."""
    n = max(setup.processes, 1)
    split = {"none": (), "zero2": ("gradients", "optimizer"),
             "zero3": ("weights", "gradients", "optimizer"), "fsdp": ("weights", "gradients", "optimizer")}
    return {k: v / n if k in split[setup.shard] else v for k, v in components.items()}


# -------------------------------------------------------------------------------------- activations

def _fused(arch: Arch, training: bool) -> bool:
    """Whether the attention kernel keeps no scores: flash/flex always, SDPA unless it trains with attention
    dropout (PyTorch's fused CPU/GPU kernels then fall back to the math implementation)."""
    if arch.attention in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        return True
    return arch.attention == "sdpa" and not (training and arch.attention_dropout > 0)


def score_bytes_per_value(arch: Arch, setup: Setup, *, training: bool = True) -> float:
    """Bytes kept per attention score (``heads x seq`` of them per token); 0 for a fused kernel. fp32: the
    softmax output (4), with dropout also its mask and the dropped copy (12). Under autocast transformers'
    GPT-2 and Llama eager attention take the softmax in fp32 and keep a bf16 copy (6; BERT's stays bf16: 2),
    dropout adds its mask and output; the SDPA math fallback keeps 12."""
    if _fused(arch, training):
        return 0.0
    dropout = training and arch.attention_dropout > 0
    if setup.precision == "fp32" or arch.attention != "eager":
        return 12.0 if dropout else 4.0
    if arch.family == "bert":
        return 6.0 if dropout else 2.0
    return 8.0 if dropout else 6.0


def attention_kernel_bytes(arch: Arch, setup: Setup, *, training: bool = True) -> float:
    """Per token, what the attention keeps besides the scores: q, k, v and the output. Eager attention
    expands grouped key/value heads to the query heads (``repeat_kv``) before keeping them; transformers'
    GPT-2 under fused SDPA keeps two more copies of the hidden width; the SDPA math fallback under autocast keeps
    the scaled q and k and a cast of the output as well (measured: 3 a h)."""
    a, q, kv, h = setup.act_bytes, arch.q_width, arch.kv_width, arch.hidden
    if arch.attention == "eager":
        return a * (2 * q + 2 * max(kv, q))
    kept = a * (2 * q + 2 * kv)
    if arch.family == "gpt2" and arch.attention == "sdpa" and _fused(arch, training):
        kept += 2 * a * h
    if not _fused(arch, training) and a < 4:
        kept += 3 * a * h
    return kept


def _group_input_bytes(role: str, group, a: int) -> float:
    """Bytes the linear layers of one group keep of their input, per token (module docstring). PEFT casts a
    LoRA branch's input to its fp32 weights' dtype before the dropout: the dropout mask is fp32 and, under
    autocast, the branch keeps its own bf16 copy whatever the input's dtype."""
    w = group.width
    fp32_input = role in _FP32_INPUT_ROLES
    dropped = group.lora_dropout * (4 + a) * w  # mask + the dropped copy lora_A keeps
    if a < 4:
        own = group.train * a * w if fp32_input else (a * w if group.train and role != "out" else 0.0)
        return own + group.lora * a * w + dropped
    # fp32: readers of one tensor share it; the attention output is kept by the kernel already
    shared = 4 * w if (group.train + group.lora) and role != "out" else 0.0
    return shared + dropped


def layer_activation_bytes(arch: Arch, layer: LayerLinears, setup: Setup, seq: int) -> float:
    """Bytes one block keeps for the backward pass, per token (see the module docstring)."""
    if not layer.in_graph:
        return 0.0
    a = setup.act_bytes
    h, f = arch.hidden, arch.intermediate
    # two norms; transformers' RMSNorm keeps the normalised input too when its weight trains
    total = 2 * (8 if arch.family == "llama" and layer.norms_train else 4) * h
    total += attention_kernel_bytes(arch, setup)  # q, k, v and the attention output
    total += arch.heads * seq * score_bytes_per_value(arch, setup)
    total += (3 if arch.gated_mlp else 1) * a * f  # GELU input, or gate / act(gate) / up
    for role, group in layer.groups.items():
        total += _group_input_bytes(role, group, a)
    if arch.hidden_dropout > 0:
        total += 2 * a * h
    return total


def _blocks(params: ParamStats, arch: Arch) -> tuple[LayerLinears, ...]:
    """The blocks to count: those found in the model, else ``arch.layers`` fully trainable ones."""
    if params.layers:
        return params.layers
    return tuple(LayerLinears(True) for _ in range(arch.layers))


def activation_bytes(arch: Arch, params: ParamStats, setup: Setup, tokens: int, seq: int) -> tuple[float, float]:
    """``(kept for the backward pass, largest single block)`` for ``tokens`` tokens padded to ``seq``;
    with checkpointing the blocks keep their input only and one block is recomputed at a time."""
    blocks = _blocks(params, arch)
    per_block = [layer_activation_bytes(arch, layer, setup, seq) for layer in blocks]
    largest = max(per_block, default=0.0) * tokens
    # embeddings' LayerNorm input, the final norm and the head's input (fp32 residual stream)
    outside = (8 + setup.act_bytes) * arch.hidden * tokens
    if setup.checkpointing:
        kept = sum(4 * arch.hidden for layer in blocks if layer.in_graph) * tokens
        return kept + largest + outside, largest
    if arch.cross_attention_layers:  # decoder blocks also keep the cross-attention's q, k, v and output
        cross = arch.cross_attention_layers * setup.act_bytes * (2 * arch.q_width + 2 * arch.kv_width)
        outside += cross * tokens
    return sum(per_block) * tokens + outside, largest


def loss_bytes(arch: Arch, setup: Setup, tokens: int) -> float:
    """The loss's logits at the training peak. Vocabulary-wide kinds: chunked (``LOSS_CHUNK_ROWS`` labelled
    rows at a time: logits, fp32 copy, log-softmax/gradient ~ 3 x 4 bytes per value) or, before the
    chunked loss, the whole batch's logits (compute dtype) + fp32 copy + gradient."""
    if setup.label_kind in ("causal", "mlm", "target"):
        rows = tokens * setup.labelled_fraction
        if setup.loss_chunk_rows:
            return min(setup.loss_chunk_rows, rows) * arch.vocab * 4 * 3
        return tokens * arch.vocab * (setup.act_bytes + 4 + 4)
    width = setup.num_labels if setup.label_kind in ("tokens", "span") else 0
    return tokens * width * (setup.act_bytes + 8)


# ---------------------------------------------------------------------------------------------- phases

def allocator_bytes(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration) -> float:
    """CPU only: what glibc's malloc keeps beyond the live tensors once steps repeat at the peak's size.
    After the first frees, its mmap threshold rises (up to 32 MB) and a step's mid-sized tensors come from
    the heap, which keeps freed memory and fragments: measured as a share of the step's activation volume
    (all blocks' activations, kept or, with checkpointing, recomputed), not when only the first, longest
    batch reaches the peak."""
    if setup.device != "cpu" or not setup.steady_at_peak or not cal.allocator_retention:
        return 0.0
    volume, _ = activation_bytes(arch, params, replace(setup, checkpointing=False), setup.peak_tokens,
                                 setup.seq_peak)
    return cal.allocator_retention * volume


def train_components(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration) -> dict[str, float]:
    """Bytes at the training step's peak (the start of the backward pass of the longest micro-batch)."""
    tokens = setup.peak_tokens
    kept, largest = activation_bytes(arch, params, setup, tokens, setup.seq_peak)
    parts = {
        "framework": cal.framework_bytes,
        "weights": weight_bytes(params, setup),
        "autocast copies": autocast_copy_bytes(params, setup),
        "gradients": gradient_bytes(params),
        "optimizer": optimizer_bytes(params, setup),
        "activations": kept,
        "backward workspace": cal.workspace_factor * largest,
        "loss": loss_bytes(arch, setup, tokens),
        "allocator": allocator_bytes(arch, params, setup, cal),
    }
    return sharded(parts, setup)


def eval_components(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration) -> dict[str, float]:
    """Bytes during an evaluation batch: no gradients (``zero_grad(set_to_none=True)`` freed them), the
    optimizer state stays, and only the activations of the block being computed are alive."""
    tokens = setup.eval_batch * setup.eval_seq
    a = setup.act_bytes
    live = tokens * (a * (arch.intermediate * (3 if arch.gated_mlp else 2) + 4 * arch.hidden)
                     + 4 * 2 * arch.hidden)
    live += tokens * arch.heads * setup.eval_seq * score_bytes_per_value(arch, setup, training=False)
    if setup.label_kind in ("causal", "mlm", "target"):
        rows = tokens * setup.labelled_fraction
        logits = (min(setup.loss_chunk_rows, rows) * arch.vocab * 4 * 2 if setup.loss_chunk_rows
                  else tokens * arch.vocab * (a + 4))
    else:
        logits = tokens * max(setup.num_labels, 1) * (a + 4)
    parts = {
        "framework": cal.framework_bytes,
        "weights": weight_bytes(params, setup),
        "autocast copies": autocast_copy_bytes(params, setup),
        "optimizer": optimizer_bytes(params, setup),
        "activations": live,
        "loss": logits,
    }
    return sharded(parts, setup)


def kv_cache_bytes(arch: Arch, batch: int, context: int, bytes_per_value: int) -> float:
    """2 (keys and values) x blocks x kv heads x head dim x context x batch x bytes."""
    return 2.0 * arch.layers * arch.kv_heads * arch.head_dim * context * batch * bytes_per_value


def generation_components(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration) -> dict[str, float]:
    """Bytes while generating for evaluation (causal LM): the KV cache of the batch, one step's logits."""
    if setup.generation is None:
        return {}
    batch, prompt, new = setup.generation
    parts = {
        "framework": cal.framework_bytes,
        "weights": weight_bytes(params, setup),
        "autocast copies": autocast_copy_bytes(params, setup),
        "optimizer": optimizer_bytes(params, setup),
        "kv cache": kv_cache_bytes(arch, batch, prompt + new, setup.act_bytes),
        "activations": batch * prompt * (setup.act_bytes * 3 * arch.intermediate + 8 * arch.hidden),
        "loss": batch * arch.vocab * 4 * 2,
    }
    return sharded(parts, setup)


# ------------------------------------------------------------------------------------------------- time

def step_flops(arch: Arch, params: ParamStats, setup: Setup, config) -> float:
    """Training FLOPs of one optimizer step of this process: ``tuneforge.train.flops``' per-example count
    (6 per trainable, 4 per frozen, 2 per forward-only matmul weight per token, plus attention) for
    ``micro_batch`` examples of ``seq_mean`` tokens, times the accumulation; gradient checkpointing runs
    each block's forward twice (+2 per weight per token and the attention forward again: ~8N)."""
    from tuneforge.train.flops import attention_flops_per_token, example_flops, stack_shapes

    seq = setup.seq_mean
    per_example = float(example_flops(config, params.flop_params, params.flop_decoder, seq, seq))
    if setup.checkpointing:
        (layers, hidden), _ = stack_shapes(config)
        fp = params.flop_params
        per_example += seq * (2.0 * fp.total + attention_flops_per_token(layers, hidden, seq, backward_share=0.0))
    return per_example * setup.micro_batch * setup.accumulation


def dropout_elements(arch: Arch, params: ParamStats, setup: Setup, tokens: float, seq: float) -> float:
    """Dropout mask values drawn in one micro-batch: hidden dropout (2 per block, hidden wide, plus the
    embeddings'), attention dropout (every score), LoRA dropout (every adapted layer's input)."""
    per_token = 0.0
    for layer in _blocks(params, arch):
        if arch.hidden_dropout > 0:
            per_token += 2 * arch.hidden
        if arch.attention_dropout > 0:
            per_token += arch.heads * seq
        per_token += sum(g.lora_dropout * g.width for g in layer.groups.values())
    if arch.hidden_dropout > 0:
        per_token += arch.hidden
    return per_token * tokens


def logit_elements(arch: Arch, setup: Setup, tokens: float) -> tuple[float, float]:
    """(logits through the fallback loss: the batch's whole ``[tokens, vocab]``, logits through the chunked
    loss: labelled rows x vocab) of one micro-batch; vocabulary-wide label kinds only."""
    if setup.label_kind not in ("causal", "mlm", "target"):
        return 0.0, 0.0
    if setup.loss_chunk_rows:
        return 0.0, tokens * setup.labelled_fraction * arch.vocab
    return tokens * arch.vocab, 0.0


def achievable_mfu(cal: Calibration, precision: str) -> float:
    return cal.mfu_fp32 if precision == "fp32" and cal.mfu_fp32 else cal.mfu


def micro_batch_seconds(flops: float, activation: float, peak_flops: float, cal: Calibration,
                        dropout: float = 0.0, logits: tuple[float, float] = (0.0, 0.0), threads: int = 1,
                        precision: str = "bf16") -> float:
    """One micro-batch: its FLOPs at the achievable share (``cal.mfu``, fp32: ``cal.mfu_fp32``) of the
    matmul peak, plus (CPU) the memory-bound work
    (norms, activations, softmax, casts, their backward), which streams through about the kept
    activations and takes ``activation / cal.bandwidth``, the dropout masks' random numbers and the
    vocabulary loss's softmax over every logit (per-element costs of one thread, shared by ``threads``)."""
    seconds = flops / (peak_flops * achievable_mfu(cal, precision))
    if cal.bandwidth:
        seconds += activation / cal.bandwidth
    per_element = (dropout * cal.dropout_s_per_element + logits[0] * cal.logit_s_per_element
                   + logits[1] * cal.chunked_logit_s_per_element)
    return seconds + per_element / max(threads, 1)


def optimizer_traffic_bytes(params: ParamStats, setup: Setup) -> float:
    """Bytes the optimizer step streams through memory: every trainable parameter, its gradient and its
    state read and written once (gradient clipping and zero_grad are lighter passes over the gradients)."""
    return 2.0 * (8.0 * params.trainable + optimizer_bytes(params, setup))


def step_seconds(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration, config,
                 peak_flops: float | None) -> float | None:
    """An optimizer step of ``accumulation`` micro-batches of ``micro_batch x seq_mean`` tokens, the
    optimizer's pass over the trainable parameters (CPU: at ``cal.bandwidth``) and the fixed per-step
    cost; None without a matmul peak."""
    if not peak_flops:
        return None
    one = replace(setup, accumulation=1)
    flops = step_flops(arch, params, one, config)
    tokens = setup.micro_batch * setup.seq_mean
    kept, _ = activation_bytes(arch, params, one, tokens, math.ceil(setup.seq_mean))
    micro = micro_batch_seconds(flops, kept, peak_flops, cal, dropout_elements(arch, params, one, tokens,
                                                                                 setup.seq_mean),
                                logit_elements(arch, one, tokens), setup.threads, setup.precision)
    update = optimizer_traffic_bytes(params, setup) / cal.bandwidth if cal.bandwidth else 0.0
    return setup.accumulation * micro + update + cal.step_overhead_s


def estimate(arch: Arch, params: ParamStats, setup: Setup, cal: Calibration, config,
             peak_flops: float | None, steps: int | None) -> Estimate:
    return Estimate(components=train_components(arch, params, setup, cal),
                    eval_components=eval_components(arch, params, setup, cal),
                    generation_components=generation_components(arch, params, setup, cal),
                    flops_per_step=step_flops(arch, params, setup, config),
                    step_seconds=step_seconds(arch, params, setup, cal, config, peak_flops), steps=steps,
                    eval_auto=setup.eval_auto)


