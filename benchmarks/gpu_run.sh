#!/bin/bash
# One device call on a lent GPU (see ../shared/gpu/README.md): P1, the GPU tests, P2 on the GPU, P3. Each part is
# capped so one failure cannot eat the call; the outputs go to $OUT. Run from the repository root, with `.gpu`
# carried:  bash benchmarks/gpu_run.sh
mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
export RAY_DEDUP_LOGS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a $OUT/card.txt
date -u | tee -a $OUT/card.txt
t0=$(date +%s)
timeout 100 python3 benchmarks/p1_throughput.py --batch 256 --compile graph,on,auto > $OUT/p1.txt 2>&1; echo "p1 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
timeout 25 python3 benchmarks/p1_throughput.py --batch 512 --compile graph > $OUT/p1_512.txt 2>&1; echo "p1 512 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
grep -v "^\s*$" $OUT/p1.txt | tail -8; tail -3 $OUT/p1_512.txt
t0=$(date +%s)
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py "tests/test_trainables.py::test_trains_on_cuda_when_present" > $OUT/tests.txt 2>&1; echo "tests rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
grep -E "^(FAILED|ERROR|E  )|passed|failed" $OUT/tests.txt | head -20
t0=$(date +%s)
timeout 130 python3 benchmarks/p2_overhead.py --gpu > $OUT/p2.txt 2>&1; echo "p2 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
tail -4 $OUT/p2.txt
t0=$(date +%s)
timeout 100 python3 benchmarks/p3_packing.py --compile auto --epochs 12 > $OUT/p3.txt 2>&1; echo "p3 rc=$? $(( $(date +%s)-t0 ))s" | tee -a $OUT/times.txt
tail -3 $OUT/p3.txt
