#!/usr/bin/env bash
# On the GPU machine, from the repo root, with .gpu/ carried (made by benchmarks/gpu/prepare.sh here):
#
#   bash benchmarks/gpu/run.sh STEP...
#
# Steps (each fits one 10-minute call of the device tool; the machine forgets everything between calls that are
# more than 30 s apart, so every call installs the wheels again, which takes seconds):
#   tests       the whole suite, the tests marked gpu included
#   throughput  benchmarks/throughput.py --device cuda --compile: ResNet-18 (random weights) and Lite0
#   demo        python run_pipeline.py demo, times per stage
#   campus      builds campus-public from vtest.avi, then run --config pipelines/campus.yaml, times per stage
# Logs and each benchmark's JSON (its last line, with the GPU's name, torch's version and the commit) go to $OUT
# (the device tool's folder that comes back), else to gpu-results/.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: bash benchmarks/gpu/run.sh tests|throughput|demo|campus ..." >&2; exit 2; }
for step in "$@"; do
    case $step in tests|throughput|demo|campus) ;;
        *) echo "error: unknown step '$step'; expected tests, throughput, demo or campus" >&2; exit 2 ;;
    esac
done
out=${OUT:-gpu-results}
mkdir -p "$out"
[ -d .gpu/whl ] || { echo "error: .gpu/whl is missing: run benchmarks/gpu/prepare.sh first and carry .gpu" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
commit=$(cat .gpu/commit 2>/dev/null || echo unknown)

# the last line of a log (a benchmark's JSON) with the machine, torch and commit added -> $out/NAME.json
result() {
    tail -n 1 "$out/$1.log" | python3 -c "
import json, sys, torch
r = json.loads(sys.stdin.read())
r.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, commit='$commit')
print(json.dumps(r))" > "$out/$1.json"
}

status=0
for step in "$@"; do
    case $step in
        tests) python3 -m pytest -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" || status=1 ;;
        throughput)
            for b in resnet18 efficientnet_lite0; do
                python3 benchmarks/throughput.py --device cuda --compile --backbone $b 2>&1 | tee "$out/throughput_$b.log" \
                    && result "throughput_$b" || status=1
            done ;;
        demo) python3 run_pipeline.py demo --out /tmp/runs/demo 2>&1 | tee "$out/demo.log" || status=1
              cp /tmp/runs/demo/metrics.json "$out/demo_metrics.json" 2>/dev/null ;;
        campus)
            python3 .gpu/bench/make_campus_bench.py --spec .gpu/bench/campus_public.json --out /tmp/campus > /dev/null \
                && python3 run_pipeline.py run --config pipelines/campus.yaml --data /tmp/campus --out /tmp/runs/campus \
                    2>&1 | tee "$out/campus.log" || status=1
            cp /tmp/runs/campus/metrics.json "$out/campus_metrics.json" 2>/dev/null ;;
    esac
done
exit $status
