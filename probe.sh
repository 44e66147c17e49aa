#!/bin/bash
# Temporary device probe (not committed): profile + sd3tune-only training timings.
O=$OUT; export OUT=/tmp/bo; mkdir -p $OUT
BENCH_WORKLOADS=profile BENCH_BUDGET_S=${PROFILE_BUDGET:-250} bash bench/run_bench.sh > $OUT/bench.log 2>&1
tail -5 $OUT/bench.log
w=/tmp/sd3bench; nv=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$w/lib:$nv/cudnn/lib:$nv/nccl/lib:/usr/local/cuda/lib64
t() { n=$1; shift; timeout 120 $w/sd3tune train --model $w/model-sd3-medium --instance_data_dir $w/images --instance_prompt "a photo of sks dog" --rank 4 --mixed_precision bf16 --seed 0 --report_to none --output_dir $w/$n --device cuda --metrics-json $OUT/$n.json "$@" > $OUT/$n.log 2>&1; echo "$n rc=$?"; grep -h "memory" $OUT/$n.log; python3 -c "import json;d=json.load(open('$OUT/$n.json'));print(d['seconds_per_update'],d['phase_seconds_per_update'],d['train_peak_gpu_bytes']/2**30)"; }
t p512c --resolution 512 --train_batch_size 4 --max_train_steps 10 --gradient_checkpointing --cache_dir $w/cache512
t p512n --resolution 512 --train_batch_size 4 --max_train_steps 10 --cache_dir $w/cache512
t p1024c --resolution 1024 --train_batch_size 1 --max_train_steps 10 --gradient_checkpointing --cache_dir $w/cache1024
cat $OUT/profile512.md | head -45
tar czf $O/logs.tgz -C $OUT .
