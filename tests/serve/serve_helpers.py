"""Constants and helpers shared by the gateway tests."""

from __future__ import annotations

from pathlib import Path

from tuneforge.workspace import Workspace

API_KEY = "sk-test-inference"
ADMIN_KEY = "sk-test-admin"
ENV = {"TUNEFORGE_API_KEY": API_KEY, "TUNEFORGE_ADMIN_KEY": ADMIN_KEY}


def make_adapter(base_dir: Path, out: Path, seed: int, ws: Workspace) -> Path:
    """A LoRA adapter directory as `tuneforge train` writes it (random non-zero LoRA weights, so each
    seed generates differently), built with PEFT directly to keep the tests fast."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_contract, load_model, load_tokenizer, resolve_model
    from tuneforge.train._artifacts import save

    resolved = resolve_model(str(base_dir), ws)
    tokenizer = load_tokenizer(resolved)
    torch.manual_seed(seed)
    model = get_peft_model(load_model(resolved, "float32"), LoraConfig(
        r=2, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    meta = {"kind": "adapter", "name": f"support-{seed}",
            "base_model": {"ref": resolved.ref, "name": resolved.name, "identity": resolved.identity},
            "contract": load_contract(resolved, tokenizer).to_dict(),
            "dataset": {"fingerprint": f"{seed:x}" * 64}, "metrics": {}}
    save(model, tokenizer, out, meta, full=False)
    return out
