"""``ia3``: learned rescaling of chosen activations (Liu et al. 2022), through PEFT; merged on export."""

from __future__ import annotations

from pydantic import Field, model_validator

from tuneforge.models.methods.base import Method, register
from tuneforge.models.methods.peft_common import merge_and_unload, peft_apply
from tuneforge.sections import Section


class IA3Config(Section):
    target_modules: list[str] | None = Field(
        None,
        description="Layers whose activations IA3 rescales, e.g. [key, value, output.dense]. null: PEFT's "
        "default for the architecture (keys, values and the feed-forward output).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of target_modules are feed-forward layers (IA3 scales their input rather than "
        "their output). Must be a subset of target_modules; null with target_modules null: PEFT's default.",
    )

    @model_validator(mode="after")
    def _check(self) -> "IA3Config":
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("ia3.target_modules is empty; list module names or use null for the default")
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                raise ValueError(
                    "ia3.feedforward_modules is set but ia3.target_modules is null; set both, or neither for "
                    "the architecture's default"
                )
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(
                    f"ia3.feedforward_modules {extra} are not in ia3.target_modules {self.target_modules}; "
                    "every feed-forward module must also be a target"
                )
        return self


def _peft_config(model, cfg: IA3Config, ctx, task, save):
    import peft

    return peft.IA3Config(task_type=task, target_modules=cfg.target_modules,
                          feedforward_modules=cfg.feedforward_modules, modules_to_save=save), "ia3.target_modules"


IA3 = register(Method("ia3", peft_apply(_peft_config), "merged", section="ia3", config=IA3Config,
                      merge=merge_and_unload))
