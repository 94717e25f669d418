"""`loris train recipe.yaml --nproc 2` starts torchrun (c10d rendezvous on localhost), trains on 2 CPU
ranks and writes one adapter; the launch helpers build torchrun's own command line."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from spawn import free_port

from loris.distributed.launch import LaunchPlan, strip_launch_flags, torchrun_command


def test_torchrun_command_single_and_multi_node():
    one = torchrun_command(LaunchPlan(2), ["train", "r.yaml"])
    assert one[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in one and one[-4:] == ["-m", "loris.cli", "train", "r.yaml"]
    two = torchrun_command(LaunchPlan(8, nnodes=2, rdzv_endpoint="node0:29500"), ["train", "r.yaml"])
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500"} <= set(two)
    with pytest.raises(ValueError, match="rdzv-endpoint"):
        LaunchPlan(8, nnodes=2)
    argv = ["train", "r.yaml", "--nproc", "2", "--rdzv-endpoint=h:1", "--max-steps", "3"]
    assert strip_launch_flags(argv) == ["train", "r.yaml", "--max-steps", "3"]


def test_loris_train_nproc_2_writes_one_adapter(saved_family, tmp_path, monkeypatch, capsys):
    from loris.cli import main

    monkeypatch.chdir(tmp_path)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([os.path.abspath(src), os.environ.get("PYTHONPATH", "")])
    )
    rows = [{"text": " ".join(f"w{4 + (i + j) % 50}" for j in range(6))} for i in range(8)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "model": {"name_or_path": str(saved_family("llama")[1]), "max_seq_length": 64, "dtype": "float32"},
        "lora": {"r": 8, "lora_alpha": 16, "use_gradient_checkpointing": False},
        "data": {"path": "rows.jsonl", "text_field": "text"},
        "train": {"output_dir": "out", "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "disable_tqdm": True},
        "save": {"adapter_dir": "adapter"},
    }  # fmt: skip
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    endpoint = f"127.0.0.1:{free_port()}"  # the multi-node code path: an explicit c10d rendezvous
    assert main(["train", str(cfg), "--nproc", "2", "--rdzv-endpoint", endpoint]) == 0
    written = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert [n for n in written if n.startswith("adapter")] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "tokenizer_config.json" in written
    assert not (tmp_path / "None").exists()
    logs = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs] == [1, 2]  # rank 0 alone writes the log
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]  # no temp folder left


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_an_unchanged_script_runs_under_a_launcher(launcher, saved_family, tmp_path):
    """A script written for one GPU, launched on 2 CPU processes: it trains and rank 0 saves the adapter."""
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "unsloth_style_train.py")
    folder, out = str(saved_family("llama")[1]), str(tmp_path / "out")
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    else:
        pytest.importorskip("accelerate")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={free_port()}"]  # fmt: skip
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run([*cmd, script, folder, out], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "lora" / "adapter_model.safetensors").is_file()
    logs = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs] == [1, 2]
