"""Several processes whose model is sharded (FSDP2, DeepSpeed ZeRO-3): what changes for tuneforge's loop.

Under DDP (and ZeRO-1/2) every process holds every weight, so the main process alone can save the
best weights, run the final evaluation and export. Under FSDP (and ZeRO-3) each process holds a
shard of every parameter and a forward pass gathers the shards from all processes. Hence:

1. every process runs the same forward passes: evaluation during training runs on every process, on
   every row, with one batch size for all (a process that skipped a forward would leave the others
   waiting in its all-gather);
2. full weights exist only after a collective gather, which every process joins and the main process
   receives (``trainable_weights`` for the best checkpoint, ``full_weights`` at the end);
3. the final evaluation and the export run on the main process, on a plain copy of the model rebuilt
   from the gathered weights (``train.run``), exactly as after a DDP run;
4. the resume state (``checkpoints/last``) stays sharded: Accelerate's ``save_state`` has every
   process write its own shards (``torch.distributed.checkpoint``) into the shared temporary folder of
   ``train.checkpoint``'s atomic scheme, and ``load_state`` reads them back.

See docs/distributed.md for the launch commands and the shipped configs (configs/accelerate/).
"""

from __future__ import annotations

import os

from tuneforge.errors import TuneforgeError


def fsdp_requested() -> bool:
    """``accelerate launch`` with an FSDP config (or --use_fsdp) exports this to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(mixed_precision: str, *, cpu: bool):
    """The run's Accelerator; under an FSDP launch, one that really shards (FSDP version 2), on GPUs or CPUs."""
    from accelerate import Accelerator

    if not fsdp_requested():
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # every setting from the FSDP_* variables the launcher exported
    if plugin.fsdp_version != 2:
        raise TuneforgeError(
            f"FSDP version {plugin.fsdp_version} requested (fsdp_config.fsdp_version / FSDP_VERSION); tuneforge "
            "trains with FSDP version 2 only: set fsdp_version: 2 (configs/accelerate/fsdp2.yaml), or add "
            "--fsdp_version 2 to accelerate launch --use_fsdp"
        )
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu, fsdp_plugin=plugin)
    if cpu and accelerator.num_processes > 1 and not accelerator.is_fsdp2:
        _enable_fsdp_on_cpu(accelerator, plugin, mixed_precision)
    return accelerator


def _enable_fsdp_on_cpu(accelerator, plugin, mixed_precision: str) -> None:
    """Accelerate 1.16 switches to FSDP only for accelerator devices: with CPU processes (gloo) its state
    stays MULTI_CPU and the FSDP settings are dropped without a word, so an FSDP launch on a CPU machine
    would silently train as DDP. torch's ``fully_shard`` runs on CPU over gloo, and so does Accelerate's
    FSDP2 path (prepare, DCP save/load, state-dict gathering) once the state says FSDP: set it here,
    in both of Accelerate's shared states (a later ``AcceleratorState()`` copies PartialState's type).
    This is what lets the suite test tuneforge's FSDP code paths on a CPU-only machine."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)  # what AcceleratorState does on GPUs
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if not accelerator.is_fsdp2:
        raise TuneforgeError(
            "FSDP on CPU processes: this accelerate version did not take the FSDP state tuneforge sets for it; "
            "launch without the FSDP config (plain DDP: configs/accelerate/ddp.yaml) on CPUs"
        )


def params_sharded(accelerator) -> bool:
    """Whether each process holds only a shard of every parameter (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def describe(accelerator) -> str:
    """One line for the run's output: how the processes share the work."""
    from accelerate.utils import DistributedType

    n = accelerator.num_processes
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        wrap = plugin.transformer_cls_names_to_wrap
        return (f"distributed: FSDP{plugin.fsdp_version} over {n} processes (parameters, gradients and optimizer "
                f"state sharded; {'blocks ' + ', '.join(wrap) if wrap else 'one unit'} gathered per forward; "
                f"resume state {str(plugin.state_dict_type).split('.')[-1]})")
    if kind == DistributedType.DEEPSPEED:
        return f"distributed: DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage} over {n} processes"
    if n > 1:
        return f"distributed: data parallel (DDP) over {n} processes, every process holds the whole model"
    return "distributed: one process"


def check_distributed_options(recipe, accelerator) -> None:
    """Refuse, before any work, what tuneforge's loop cannot do under this launch."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED and recipe.train.gradient_accumulation_steps > 1:
        # DeepSpeed's engine steps the optimizer inside backward() unless told which micro-batch ends a
        # step through Accelerate's accumulate(); tuneforge's loop accumulates itself.
        raise TuneforgeError(
            f"train.gradient_accumulation_steps: {recipe.train.gradient_accumulation_steps} under DeepSpeed; "
            "tuneforge supports 1 there: raise train.batch_size (the global batch) instead, or use FSDP "
            "(configs/accelerate/fsdp2.yaml)"
        )
    if not params_sharded(accelerator):
        return
    if getattr(recipe.model, "quantize", None) is not None:
        # A 4/8-bit base would have to be sharded as bitsandbytes tensors and gathered back into a
        # rebuilt quantised copy for the export: not a path tuneforge has.
        raise TuneforgeError("model.quantize (QLoRA) under FSDP / ZeRO-3 is not supported: the quantised base is "
                             "small enough to train with DDP (configs/accelerate/ddp.yaml)")
    from tuneforge.tasks import spec_for

    generates = spec_for(recipe).loop_generation(recipe)
    if generates:
        # Generation during training runs on the main process alone; with sharded parameters every
        # forward is collective, so the other processes would wait for it forever.
        raise TuneforgeError(
            f"{'; '.join(generates)}: generation during training needs the whole model on one process, and "
            "under FSDP / ZeRO-3 each process holds a shard. Turn it off (the final evaluation still "
            "generates, on the gathered model), or train with DDP (configs/accelerate/ddp.yaml)"
        )


def configure_sharding(accelerator, model, train_cfg) -> None:
    """What Accelerate needs from tuneforge before ``prepare(model, optimizer)`` under FSDP2 or DeepSpeed."""
    from accelerate.utils import DistributedType

    set_fsdp_wrap_classes(accelerator, model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.is_auto("train_micro_batch_size_per_gpu"):
            # Accelerate reads it from a prepared DataLoader; tuneforge batches itself (train.batch_size is
            # the global micro-batch). DeepSpeed only books it (train_batch_size = micro x accumulation x N).
            per_process = max(1, train_cfg.batch_size // accelerator.num_processes)
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = per_process


def set_fsdp_wrap_classes(accelerator, model) -> None:
    """Shard each transformer block as its own FSDP unit (gathered for its forward, freed after).

    Without ``fsdp_transformer_layer_cls_to_wrap`` Accelerate 1.16 takes the model's ``_no_split_modules``,
    which for BERT-like models also names the embeddings module (``BertEmbeddings``); it then shards the
    input embedding inside it a second time and fails ("TypeError: Invariant encountered: value was None
    when it should not be"). So tuneforge keeps those classes minus any that contain the input or output
    embeddings, which Accelerate always shards on their own."""
    if not accelerator.is_fsdp2:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is not None:  # the user named them: theirs
        return
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy:
        return
    embeddings = [m for m in (getattr(model, "get_input_embeddings", lambda: None)(),
                              getattr(model, "get_output_embeddings", lambda: None)()) if m is not None]
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = {type(m).__name__: m for m in model.modules() if type(m).__name__ in names}
    plugin.transformer_cls_names_to_wrap = sorted(
        name for name, module in found.items()
        if not any(e is sub for e in embeddings for sub in module.modules())
    )


def eval_batch_size(accelerator, setting, model, encoded) -> int | str:
    """train.eval_batch_size for evaluation during training. Sharded: one number for every process ("auto"
    decided on the main process from its free memory), so that all run the same forward passes."""
    if setting != "auto" or not params_sharded(accelerator):
        return setting
    from accelerate.utils import broadcast_object_list

    from tuneforge.evaluate.predict import resolve_eval_batch_size

    size = [resolve_eval_batch_size(setting, model, encoded, accelerator.device)
            if accelerator.is_main_process else None]
    broadcast_object_list(size)
    return size[0]


def trainable_weights(accelerator, model) -> dict | None:
    """The trainable parameters of the prepared ``model``, whole, on the main process (None elsewhere).

    Call on every process: with sharded parameters this gathers them (a collective); otherwise the main
    process copies its own and the others return at once."""
    from tuneforge.models.params import trainable_state_dict

    if not params_sharded(accelerator):
        return trainable_state_dict(accelerator.unwrap_model(model)) if accelerator.is_main_process else None
    trainable = {name for name, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    if accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # full tensors, on the main process's CPU; frozen weights are not gathered at all (LoRA: a few MB)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        state = get_model_state_dict(model, options=options)
    else:  # ZeRO-3: DeepSpeed gathers the (16-bit) weights; it has no trainable-only variant
        state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    return {name: t.detach().cpu().clone() for name, t in state.items() if name in trainable}


def full_weights(accelerator, model) -> dict | None:
    """Every weight of the sharded ``model``, on the main process (None elsewhere). Call on every process."""
    state = accelerator.get_state_dict(model)  # FSDP2: full tensors on the main process's CPU
    return state if accelerator.is_main_process else None


def load_full_weights(model, state: dict) -> None:
    """Load ``full_weights`` into a freshly built copy of the trained model (same recipe, same method)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied weight (input embedding = output projection) may come under one of its names only: loaded then.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[name]) for name in state if name in params}
    missing = [name for name in missing if name not in params or id(params[name]) not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"the gathered weights do not fit the rebuilt model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
