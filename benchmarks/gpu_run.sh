#!/bin/bash
# One device call on a lent GPU (see ../shared/gpu/README.md). Each part is capped so one failure cannot eat the
# call; the outputs go to $OUT. Run from the repository root, with `.gpu` carried (built on the CPU machine by
# `bash ../shared/gpu/bundle.sh`):
#   bash benchmarks/gpu_run.sh                     # issue 15: P2-GPU, then P3-sweep (about 8 minutes; at most 9.6)
#   bash benchmarks/gpu_run.sh p1 tests p3         # issue 4's parts (about 4 minutes), any subset, in that order
# (issue 4's P2 on the GPU, wall / (Σ trial seconds / 4 slots), is printed by the p2gpu part as well.)
# As a device call: command "bash benchmarks/gpu_run.sh", carry [".gpu"], timeout_s 600.
parts=" ${*:-p2gpu p3sweep} "
mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export RAY_DEDUP_LOGS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import torch, sys, os; print('python', sys.version.split()[0], 'torch', torch.__version__, os.cpu_count(), 'CPUs')" | tee -a $OUT/card.txt
date -u | tee -a $OUT/card.txt
if [[ $parts == *" p1 "* ]]; then
  t0=$(date +%s)
  timeout 100 python3 benchmarks/p1_throughput.py --batch 256 --compile graph,on,auto > $OUT/p1.txt 2>&1; echo "p1 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  timeout 25 python3 benchmarks/p1_throughput.py --batch 512 --compile graph > $OUT/p1_512.txt 2>&1; echo "p1 512 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  grep -v "^\s*$" $OUT/p1.txt | tail -8; tail -3 $OUT/p1_512.txt
fi
if [[ $parts == *" tests "* ]]; then
  t0=$(date +%s)
  timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py "tests/test_trainables.py::test_trains_on_cuda_when_present" > $OUT/tests.txt 2>&1; echo "tests rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  grep -E "^(FAILED|ERROR|E  )|passed|failed" $OUT/tests.txt | head -20
fi
if [[ $parts == *" p3 "* ]]; then
  t0=$(date +%s)
  timeout 100 python3 benchmarks/p3_packing.py --compile auto --epochs 12 > $OUT/p3.txt 2>&1; echo "p3 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  tail -3 $OUT/p3.txt
fi
# issue 15. P2-GPU: one trial alone (a 1-trial `hpsearch run`, ~25 s, and the trainable called directly, ~15 s),
# then the 32-trial packed sweep (~95 s on an H200); its record is P3-sweep's hpsearch arm.
if [[ $parts == *" p2gpu "* ]]; then
  t0=$(date +%s)
  timeout 200 python3 benchmarks/p2_overhead.py --gpu --record $OUT/p2gpu.json > $OUT/p2gpu.txt 2>&1; echo "p2gpu rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  tail -7 $OUT/p2gpu.txt
fi
# P3-sweep: stock (Ray Tune + OptunaSearch + ASHA + MLflowLoggerCallback, the course's DataLoader loop) at 0.25,
# 0.5 and 1 GPU per trial, each capped by Tune's time budget (the likely best, 0.25, gets the most; a cut arm
# says PARTIAL); hpsearch is P2-GPU's sweep above (run here if that record is missing).
if [[ $parts == *" p3sweep "* ]]; then
  t0=$(date +%s)
  timeout 350 python3 benchmarks/p3_sweep.py --hpsearch-from $OUT/p2gpu.json --budget 160,70,50 > $OUT/p3sweep.txt 2>&1; echo "p3sweep rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
  tail -7 $OUT/p3sweep.txt
fi
