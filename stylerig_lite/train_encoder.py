"""``stylerig-lite train-encoder``: the photo encoder trained on a photoreal corpus (chapter 7).

The network and its loss are described in :mod:`stylerig_lite.encoder`. Each step draws a batch of
training items (corpus index >= ``validation_items``), area-averages the stored 256-px images to the
encoder's input size, jitters them (:func:`~stylerig_lite.encoder.jitter`) and regresses the
standardised ``w``. Resumable: the checkpoint holds the network, the optimiser, the schedule, the
random state and the log, and names the corpus it was trained on (a different corpus is refused).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as nnf

from .corpus import CorpusDataset, CorpusError
from .encoder import PhotoEncoder, get_config, jitter
from .io_utils import atomic_torch_save, load_checkpoint_file

__all__ = ["train_encoder", "add_arguments", "run_from_args"]


def _crops(data: Any, rows: torch.Tensor, size: int) -> torch.Tensor:
    """Corpus images of ``rows`` as ``[n, 3, size, size]`` in [-1, 1] (area-averaged from the stored size)."""
    images = data.float_images(rows)
    return nnf.interpolate(images, size=(size, size), mode="area") if images.shape[-1] != size else images


def train_encoder(corpus: Union[str, os.PathLike], out: Union[str, os.PathLike], *, preset: str = "ffhq",
                  steps: int = 6000, batch: int = 32, lr: float = 1e-3, validation_items: int = 500,
                  seed: int = 0, log_every: int = 200, checkpoint_every: int = 500,
                  minutes: Optional[float] = None, progress: bool = True) -> Dict[str, Any]:
    """Train a :class:`PhotoEncoder` on a corpus folder; resumable from ``out`` (a training checkpoint).

    Returns ``{'step', 'log': [...], 'validation_mse'}``; the log holds the training and validation
    loss (mean squared error of the standardised code) every ``log_every`` steps. The learning rate
    decays with a cosine to 5% of ``lr`` over ``steps``. ``minutes``: stop (saved, resumable) after
    the first step past this much time; a resumed run ends where an uninterrupted one would.
    """
    out = Path(out)
    data = CorpusDataset(corpus)
    manifest = data.manifest
    config = get_config(preset, num_ws=int(manifest["num_ws"]), w_dim=int(manifest["w_dim"]))
    identity = {k: manifest.get(k) for k in ("generator_sha256", "generator_file_sha256", "seed", "count")}
    rows = torch.arange(len(data))
    validation = rows[data.index < validation_items][:256]
    train_rows = rows[data.index >= validation_items]
    if len(train_rows) == 0:
        raise CorpusError(f"{data.root}: no training items ({len(data)} items, {validation_items} for validation); "
                          "make a larger corpus")
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` alone
        torch.manual_seed(seed)
        net = PhotoEncoder(config).set_output_statistics(data.w[train_rows].float())
    net.record_generator(identity["generator_sha256"], file_sha256=identity["generator_file_sha256"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = torch.Generator().manual_seed(seed)
    state: Dict[str, Any] = {"step": 0, "log": [], "window": []}  # window: train losses since the last log
    if out.exists():
        saved = load_checkpoint_file(out, "encoder training checkpoint")
        if saved.get("corpus") != identity:
            raise CorpusError(f"{out} was trained on another corpus ({saved.get('corpus')}); "
                              f"this one is {identity}. Use a new --out")
        net.load_state_dict(saved["encoder"]["state_dict"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        rng.set_state(saved["rng"])
        state = {"step": saved["step"], "log": saved["log"], "window": saved.get("window", [])}

    def target(rows_: torch.Tensor) -> torch.Tensor:
        return (data.w[rows_, 0].float() - net.w_mean) / net.w_std

    val_x = _crops(data, validation, config.image_size)
    val_y = target(validation)

    def save() -> None:
        atomic_torch_save({"format": "stylerig_lite.encoder_training/1", "encoder": net.checkpoint(),
                           "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng.get_state(),
                           "step": state["step"], "log": state["log"], "window": window, "corpus": identity,
                           "train": {"preset": preset, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                                     "validation_items": validation_items}}, out)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=state["step"], desc=f"encoder -> {out.name}", disable=not progress)
    t0, window = time.time(), list(state["window"])
    while state["step"] < steps:
        net.train()
        pick = train_rows[torch.randint(len(train_rows), (batch,), generator=rng)]
        x = jitter(_crops(data, pick, config.image_size), rng)
        loss = (net.standardised(x) - target(pick)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        state["step"] += 1
        window.append(float(loss.detach()))
        bar.update(1)
        if state["step"] % log_every == 0 or state["step"] == steps:
            net.eval()
            with torch.no_grad():
                val = float((net.standardised(val_x) - val_y).square().mean())
            state["log"].append({"step": state["step"], "train_mse": sum(window) / len(window),
                                 "validation_mse": val, "seconds": round(time.time() - t0, 1)})
            bar.set_postfix(train=f"{state['log'][-1]['train_mse']:.3f}", val=f"{val:.3f}")
            window = []
        out_of_time = minutes is not None and time.time() - t0 >= 60 * minutes
        if state["step"] % checkpoint_every == 0 or state["step"] == steps or out_of_time:
            save()
        if out_of_time:
            break
    bar.close()
    return {"step": state["step"], "log": state["log"],
            "validation_mse": state["log"][-1]["validation_mse"] if state["log"] else float("nan")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="a corpus folder of the generator (make-corpus --generator ffhq)")
    parser.add_argument("--out", required=True, help="training checkpoint (resumed when it exists)")
    parser.add_argument("--preset", default="ffhq", choices=("ffhq", "tiny"))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, help="stop (resumable) after this many minutes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = train_encoder(args.corpus, args.out, preset=args.preset, steps=args.steps, batch=args.batch, lr=args.lr,
                           seed=args.seed, minutes=args.minutes)
    print(json.dumps({"out": str(args.out), "step": result["step"], "validation_mse": result["validation_mse"]}))
    return 0
