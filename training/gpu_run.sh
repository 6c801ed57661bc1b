#!/usr/bin/env bash
# Continue the FaceWorld StyleGAN2 for a few minutes on a lent GPU machine (one NVIDIA H200).
#
# Two steps, both from the repository root:
#
#   1. Here, before calling the device tool (no GPU needed, once per checkout):
#        bash training/gpu_run.sh prepare
#      writes .gpu_carry/ (ignored through .git/info/exclude): a compressed copy of the converted
#      ICT face model (~20-30 MB; the device machine cannot download assets and ../shared does not
#      travel), placed where the asset cache looks for it.
#   2. On the device machine (the device tool's `run`, carry [".gpu_carry"], timeout_s 600):
#        bash training/gpu_run.sh run
#      a. renders the 32,768-image FaceWorld training set (seed 1, as in training/README.md) with
#         RENDER_WORKERS CPU processes (~1-2 minutes on 16 cores; identical to a CPU rendering);
#      b. resumes the GAN from training/faceworld_gan_resume.pt and its G_ema faceworld_gan_ema.pt
#         (both must exist: committed or untracked, they travel with the working tree) on --device cuda
#         with global batch GAN_BATCH, and trains for GAN_MINUTES minutes of wall-clock time, then
#         writes a checkpoint;
#      c. writes into $OUT: faceworld_gan_resume.pt + faceworld_gan_ema.pt (the new resume state, to
#         copy over training/), log.jsonl, the last sample grid and run.log. It does not replace the
#         embedded generator: the RigNets are tied to that one (see training/README.md).
#
# Defaults fit one 10-minute command: ~1 min start-up and rendering, GAN_MINUTES=5 of training,
# < 1 min for the exports. Assumes the device image's python3 (torch with CUDA, numpy, tqdm, pillow,
# matplotlib; see .library/device/KINDS.md); the package runs from the tree via PYTHONPATH (no pip).
# Results afterwards are on the CPU again: checkpoints hold CPU tensors and resume anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
PY=${PYTHON:-python3}
CARRY=.gpu_carry

if [[ $mode == prepare ]]; then
    PY=${PYTHON:-.venv/bin/python}
    grep -qxF "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    "$PY" - "$CARRY" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from stylerig_lite import assets, morphable

cache = morphable._cache_path()  # <cache>/converted/ict_face_model_v*_<hash>.npz
morphable.load_face_model(progress=False)  # converts it once if needed
arrays = morphable._MODEL_CACHE[str(cache)]
target = Path(sys.argv[1]) / "cache" / cache.relative_to(assets.default_cache_dir())
target.parent.mkdir(parents=True, exist_ok=True)
np.savez_compressed(target, **arrays)  # np.load reads compressed and plain .npz alike
print(f"{target}: {target.stat().st_size / 2**20:.1f} MiB")
EOF
    [[ -f training/faceworld_gan_resume.pt ]] || echo "warning: training/faceworld_gan_resume.pt is missing: the run step needs it" >&2
    exit 0
fi

if [[ $mode != run ]]; then
    echo "usage: bash training/gpu_run.sh prepare|run" >&2
    exit 2
fi

: "${OUT:?OUT must name the folder for the results (the device tool sets it)}"
MINUTES=${GAN_MINUTES:-5}
BATCH=${GAN_BATCH:-64}
WORKERS=${RENDER_WORKERS:-15}
DATA=${GAN_DATA:-/tmp/faceworld_train_s1}
RUN=${GAN_RUN:-/tmp/gan}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" STYLERIG_LITE_CACHE="$PWD/$CARRY/cache" \
       OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
unset STYLERIG_LITE_ASSET_MIRROR
exec > >(tee "$OUT/run.log") 2>&1

for f in faceworld_gan_resume.pt faceworld_gan_ema.pt; do
    [[ -f training/$f ]] || { echo "training/$f is missing" >&2; exit 1; }
done
[[ -d $CARRY/cache ]] || { echo "$CARRY/cache is missing: run 'bash training/gpu_run.sh prepare' here and carry $CARRY" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# a. The training set (resumable; workers split the 64 shards; the manifest is written first).
t0=$SECONDS
"$PY" -c "from stylerig_lite.datasets import render_shards; render_shards('$DATA', 32768, seed=1, shard_size=512, progress=False, shards=[])"
pids=()
for ((k = 0; k < WORKERS; k++)); do
    "$PY" -c "import torch; torch.set_num_threads(1)
from stylerig_lite.datasets import render_shards
render_shards('$DATA', 32768, seed=1, shard_size=512, progress=False, shards=range($k, 64, $WORKERS))" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "rendered FaceWorld in $((SECONDS - t0)) s"

# b. Resume the GAN on the GPU for a fixed time.
mkdir -p "$RUN"
[[ -f $RUN/checkpoint.pt ]] || { cp training/faceworld_gan_resume.pt "$RUN/checkpoint.pt"; cp training/faceworld_gan_ema.pt "$RUN/"; }
cmd=(-m stylerig_lite.cli train-gan --data "$DATA" --out "$RUN" --images 1000000000 --device cuda
     --minutes "$MINUTES" --resume-batch "$BATCH" --checkpoint-every 131072 --sample-every 131072
     --compact --seed 0 --no-progress)
t0=$SECONDS
"$PY" "${cmd[@]}"
echo "trained for $((SECONDS - t0)) s"
tail -n 3 "$RUN/log.jsonl"

# c. Results.
"$PY" -c "from stylerig_lite.train_gan import slim_resume_checkpoint as s; s('$RUN/checkpoint.pt', '$OUT/faceworld_gan_resume.pt', ema_file='$OUT/faceworld_gan_ema.pt', write_ema=True)"
cp "$RUN/log.jsonl" "$OUT/"
last=$(ls "$RUN"/fakes*.png | tail -n 1) && cp "$last" "$OUT/"
ls -la "$OUT"
