#!/usr/bin/env bash
# Acceptance check: a device agent drives an ESC/POS printer emulated by a program this project
# did not write, and `printfleet jobs show` says printed.
#
# The emulator is emupos (PyPI package "emupos", Apache-2.0, by the emupos contributors). It is
# installed by name from PyPI into its own virtualenv at run time (it needs Python >= 3.13; our
# venv may be older). Nothing of it is kept in this repository. See docs/verification.md.
#
# What it does, all on 127.0.0.1 and bounded in time:
#   1. starts emupos with one Epson TM-T20III printer on a TCP port and on a serial pty it creates;
#   2. starts `printfleet up` (embedded broker) and device agents pointed at that printer;
#   3. prints plain text (TCP, generic-80), the receipt document of docs/documents.md (TCP),
#      plain text over the emulator's serial pty (generic-80, 9600 baud), a job while the emulator
#      reports paper out (must be held, then print when the paper is back), and plain text with the
#      no-status profile (must end printed with "unconfirmed"); then a batch of 8 jobs during which
#      the emulator runs out of paper (held while it lasts, each job on paper exactly once after);
#   4. checks each job's state with `printfleet jobs show` and what the emulator printed with
#      `emupos receipt show`; prints PASS or FAIL (exit 0 / 1; 2 when the emulator cannot be had).
#
# Environment: PRINTFLEET_BIN (default: the repo's .venv/bin/printfleet), EMUPOS_PYTHON (a
# Python >= 3.13), EMUPOS_VENV, EMUPOS_VERSION (default 0.4.0), TP_WORK (work dir; default a new
# temp dir, kept for inspection), TP_TIMEOUT (whole-run limit in seconds, default 600).
set -uo pipefail

if [ -z "${_TP_INNER:-}" ]; then
    # Bound the whole run; the inner run cleans up on SIGTERM.
    export _TP_INNER=1
    exec timeout --kill-after=15 "${TP_TIMEOUT:-600}" bash "$0" "$@"
fi

HERE=$(cd "$(dirname "$0")/.." && pwd)
PF=${PRINTFLEET_BIN:-$HERE/.venv/bin/printfleet}
PY=${PRINTFLEET_PYTHON:-$HERE/.venv/bin/python}
EMUPOS_VERSION=${EMUPOS_VERSION:-0.4.0}
EMUPOS_VENV=${EMUPOS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/printfleet-bench/emupos-$EMUPOS_VERSION}
WORK=${TP_WORK:-$(mktemp -d /tmp/printfleet-tp.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export COLUMNS=160 NO_COLOR=1 PRINTFLEET_HOME="$WORK/ctl"
unset PRINTFLEET_SERVER PRINTFLEET_TOKEN

PIDS=()
FAILURES=()
log() { printf '== %s\n' "$*"; }
fail() { FAILURES+=("$*"); printf 'CHECK FAILED: %s\n' "$*"; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    PIDS=()
}
trap 'cleanup' EXIT
trap 'echo "interrupted"; exit 1' INT TERM

# Start a background service under its own time limit; remember its pid (the `timeout` process,
# which passes SIGTERM on to the service).
start() { # start LOGFILE CMD...
    local logfile=$1; shift
    timeout --kill-after=10 "${TP_TIMEOUT:-600}" "$@" >"$logfile" 2>&1 &
    PIDS+=("$!")
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...  (runs CMD until it succeeds)
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "timed out waiting for $what"; return 1; fi
        sleep 0.3
    done
}

jfield() { # jfield FILE PYTHON-EXPR-ON-d
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------
# 1. the emulator: emupos from PyPI, in its own venv

find_py313() {
    local c
    for c in "${EMUPOS_PYTHON:-}" python3.14 python3.13 /root/.pyenv/versions/3.14*/bin/python /root/.pyenv/versions/3.13*/bin/python python3; do
        [ -n "$c" ] || continue
        command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
        if timeout 20 "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}

EMUPOS=$EMUPOS_VENV/bin/emupos
if ! timeout 30 "$EMUPOS" --version 2>/dev/null | grep -qx "emupos $EMUPOS_VERSION"; then
    if ! PY313=$(find_py313); then
        echo "FAIL: emupos needs Python >= 3.13 and none was found; set EMUPOS_PYTHON to one,"
        echo "      or install emupos $EMUPOS_VERSION yourself (pip install emupos==$EMUPOS_VERSION) and set EMUPOS_VENV."
        exit 2
    fi
    log "installing emupos $EMUPOS_VERSION from PyPI into $EMUPOS_VENV (with $PY313)"
    rm -rf "$EMUPOS_VENV"
    if ! timeout 120 "$PY313" -m venv "$EMUPOS_VENV" ||
       ! timeout 600 "$EMUPOS_VENV/bin/pip" install --quiet "emupos==$EMUPOS_VERSION" 2> >(grep -v '^WARNING: Location' >&2); then
        echo "FAIL: could not install emupos $EMUPOS_VERSION from PyPI"
        exit 2
    fi
fi
log "emulator: $(timeout 30 "$EMUPOS" --version) ($EMUPOS)"

PRN_PORT=$(free_port)
API_PORT=$(free_port)
export EMUPOS_API="http://127.0.0.1:$API_PORT"
mkdir -p "$WORK/emu"
cat >"$WORK/emu/emupos.yaml" <<EOF
schema: 1
api: { host: 127.0.0.1, port: $API_PORT }
devices:
  - id: front
    type: printer
    profile: epson-tm-t20iii
    connections:
      - tcp: { host: 127.0.0.1, port: $PRN_PORT }
      - serial: { pty: true }
    receipts_dir: $WORK/emu/receipts
EOF
# TMPDIR decides where emupos publishes its serial port: $WORK/emupos/front -> /dev/pts/N
start "$WORK/emu/emupos.log" env TMPDIR="$WORK" "$EMUPOS" run --config "$WORK/emu/emupos.yaml"
PTY_LINK=$WORK/emupos/front
if ! wait_for 30 "emupos" test -e "$PTY_LINK" || ! wait_for 30 "the emupos API" timeout 10 "$EMUPOS" devices; then
    cat "$WORK/emu/emupos.log"; echo "FAIL: emupos did not start"; exit 1
fi
log "emupos printer 'front': tcp 127.0.0.1:$PRN_PORT, serial $PTY_LINK -> $(readlink "$PTY_LINK"), API $EMUPOS_API"

last_receipt_id() { timeout 15 "$EMUPOS" receipt show --json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null || true; }

# wait until the emulator has completed a receipt newer than $1, then write it (JSON) to $2
new_receipt() { # new_receipt PREVIOUS_ID OUTFILE [SECONDS]
    local prev=$1 out=$2 deadline=$((SECONDS + ${3:-15})) id
    while [ "$SECONDS" -lt "$deadline" ]; do
        if timeout 15 "$EMUPOS" receipt show --json >"$out" 2>/dev/null; then
            id=$(jfield "$out" 'd["id"]')
            [ -n "$id" ] && [ "$id" != "$prev" ] && return 0
        fi
        sleep 0.3
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# 2. our system

cd "$WORK" || exit 1
start "$WORK/up.log" "$PF" up --data-dir "$WORK/ctl" --mqtt-bind 127.0.0.1:0 --http-bind 127.0.0.1:0
if ! wait_for 60 "printfleet up" test -s "$WORK/ctl/state.json" || ! wait_for 30 "the HTTP API" timeout 10 "$PF" devices list; then
    tail -30 "$WORK/up.log"; echo "FAIL: printfleet up did not start"; exit 1
fi
log "controller: $(jfield "$WORK/ctl/state.json" 'd["http"]'), broker $(jfield "$WORK/ctl/state.json" 'd["mqtt"][0]')"

add_agent() { # add_agent NAME SERIAL PROFILE [--baud N]
    local name=$1 serial=$2 profile=$3; shift 3
    timeout 30 "$PF" devices add "$name" --serial "$serial" --profile "$profile" "$@" --out "$WORK/$name.toml" >/dev/null || return 1
    # a journal of this run's own: the default state dir is shared by every agent of that name, so a
    # run interrupted with jobs pending would have them printed by the next run's agent
    grep -q '^\[agent\]' "$WORK/$name.toml" || printf '\n[agent]\nstate_dir = "%s"\n' "$WORK/state/$name" >>"$WORK/$name.toml"
    start "$WORK/agent-$name.log" "$PF" agent run --config "$WORK/$name.toml"
}
printer_ready() { # printer_ready NAME
    timeout 10 "$PF" printers list --json >"$WORK/.printers.json" 2>/dev/null &&
        "$PY" -c 'import json,sys; sys.exit(0 if any(p["name"]==sys.argv[2] and p["status"]=="ready" for p in json.load(open(sys.argv[1]))) else 1)' "$WORK/.printers.json" "$1"
}

add_agent tp1 "socket://127.0.0.1:$PRN_PORT" generic-80 || fail "devices add tp1"
add_agent tp2 "$PTY_LINK" generic-80 --baud 9600 || fail "devices add tp2"
add_agent tp3 "socket://127.0.0.1:$PRN_PORT" no-status || fail "devices add tp3"
for p in tp1 tp2 tp3; do wait_for 45 "printer $p ready" printer_ready "$p" || fail "printer $p never became ready"; done
log "printfleet devices list"
timeout 30 "$PF" devices list
timeout 30 "$PF" printers list

# ---------------------------------------------------------------------------------------------
# 3. jobs

SUMMARY=()
run_job() { # run_job LABEL PRINTER EXPECTED_DETAIL(regex, "" = none) PRINT-ARGS...
    local label=$1 printer=$2 want_detail=$3; shift 3
    local prev; prev=$(last_receipt_id)
    log "$label: printfleet print $printer $* --wait --json"
    timeout 60 "$PF" print "$printer" "$@" --wait --wait-timeout 40 --json >"$WORK/$label.job.json" 2>"$WORK/$label.err"
    local rc=$? id state detail
    id=$(jfield "$WORK/$label.job.json" 'd["id"]' 2>/dev/null)
    state=$(jfield "$WORK/$label.job.json" 'd["state"]' 2>/dev/null)
    detail=$(jfield "$WORK/$label.job.json" 'd["detail"]' 2>/dev/null)
    echo "exit $rc, job ${id:-?}, state ${state:-?}, detail ${detail:-none}"
    [ -n "$id" ] && timeout 30 "$PF" jobs show "$id"
    [ "$rc" = 0 ] && [ "$state" = printed ] || { cat "$WORK/$label.err"; fail "$label: job not printed (exit $rc, state ${state:-?})"; }
    if [ -z "$want_detail" ]; then
        [ -z "$detail" ] || fail "$label: expected a confirmed print, got detail '$detail'"
    else
        [[ "$detail" =~ $want_detail ]] || fail "$label: expected detail matching '$want_detail', got '${detail:-none}'"
    fi
    if new_receipt "$prev" "$WORK/$label.receipt.json"; then
        echo "-- the emulator printed (emupos receipt $(jfield "$WORK/$label.receipt.json" 'd["id"]'), $(jfield "$WORK/$label.receipt.json" '"{}x{} dots, ended by {}".format(d["width_dots"], d["height_dots"], d["boundary"])')):"
        jfield "$WORK/$label.receipt.json" 'd["text"].rstrip("\n")' | sed 's/^/   | /'
        timeout 15 "$EMUPOS" receipt show --save "$WORK/$label.png" >/dev/null 2>&1
    else
        fail "$label: the emulator completed no new receipt"
        : >"$WORK/$label.receipt.json"
    fi
    SUMMARY+=("$label: job ${id:-?} ${state:-?}${detail:+ ($detail)}")
}
receipt_has() { # receipt_has LABEL TEXT
    grep -qF -- "$2" <(jfield "$WORK/$1.receipt.json" 'd["text"]' 2>/dev/null) || fail "$1: the emulator's receipt lacks '$2'"
}

run_job text-tcp tp1 "" --text "third-party emulator test"
receipt_has text-tcp "third-party emulator test"

# the complete example of docs/documents.md: logo, styles, columns, EAN-13, QR, cut, drawer, buzzer
"$PY" - "$HERE/docs/documents.md" "$WORK/receipt.json" <<'EOF'
import json, re, sys
doc = json.loads(re.search(r"```json\n(.*?)```", open(sys.argv[1], encoding="utf-8").read(), re.S).group(1))
open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(doc, ensure_ascii=False, indent=1))
EOF
run_job doc-tcp tp1 "" --doc "$WORK/receipt.json"
for want in "PRINTFLEET CAFÉ" "Almond croissant" "6.30 €" "[barcode EAN-13 4006381333931]" "[qr https://example.invalid/o/1042]"; do
    receipt_has doc-tcp "$want"
done
timeout 15 "$EMUPOS" drawer close --device front >/dev/null 2>&1  # the document pulsed the drawer open

run_job text-serial tp2 "" --text "over the emulator's serial pty"
receipt_has text-serial "over the emulator's serial pty"

run_job no-status tp3 "^unconfirmed" --text "no-status profile"
receipt_has no-status "no-status profile"

# a fault reported by the emulator's DLE EOT answers holds the job; clearing it prints the job
log "paper-out: emupos fault set front paper-out, then print, then clear"
timeout 15 "$EMUPOS" fault set front paper-out
prev=$(last_receipt_id)
timeout 30 "$PF" print tp1 --text "held until the paper is back" --json >"$WORK/paper-out.job.json"
PO_ID=$(jfield "$WORK/paper-out.job.json" 'd["id"]' 2>/dev/null)
job_state() { timeout 15 "$PF" jobs show "$PO_ID" --json >"$WORK/paper-out.show.json" 2>/dev/null && jfield "$WORK/paper-out.show.json" 'd["state"] + "|" + (d["detail"] or "")'; }
is_state() { [ "$(job_state)" = "$1" ]; }
wait_for 20 "the job held" is_state "held|paper out" || fail "paper-out: job not held for 'paper out' (now: $(job_state))"
echo "while paper out: $(job_state)"
new_receipt "$prev" "$WORK/.none.json" 3 && fail "paper-out: the emulator printed while out of paper"
timeout 15 "$EMUPOS" fault clear front paper-out
wait_for 30 "the job printed" is_state "printed|" || fail "paper-out: job not printed after the paper came back (now: $(job_state))"
timeout 30 "$PF" jobs show "$PO_ID"
if new_receipt "$prev" "$WORK/paper-out.receipt.json"; then
    echo "-- the emulator printed:"; jfield "$WORK/paper-out.receipt.json" 'd["text"].rstrip("\n")' | sed 's/^/   | /'
    receipt_has paper-out "held until the paper is back"
else
    fail "paper-out: the emulator completed no receipt after the paper came back"
fi
SUMMARY+=("paper-out: job $PO_ID $(job_state | sed 's/|$//; s/|/ /') (held for paper out first)")

# ---------------------------------------------------------------------------------------------
# 4. paper out in the middle of a batch: BATCH_N jobs submitted at once; the emulator runs out of
#    paper as soon as it has saved 3 of them; the rest must be held (reported as held), nothing
#    printed while the paper is out, and after the paper is back every job printed exactly once.

BATCH_N=8
RCPT=$WORK/emu/receipts
rcount() { find "$RCPT" -name '*.txt' 2>/dev/null | wc -l; }
emu_fault() { # emu_fault PUT|DELETE FAULT  (the emulator's HTTP API: quicker than its CLI)
    curl -fsS -m 10 -X "$1" "$EMUPOS_API/api/v1/devices/front/faults/$2" >/dev/null
}
log "batch: $BATCH_N jobs to tp1 at once; paper out once the emulator saved 3 of them; then paper back"
base=$(rcount)
SUBMITS=()
for i in $(seq 1 "$BATCH_N"); do
    timeout 30 "$PF" print tp1 --text "batch-job-$i-of-$BATCH_N" --json >"$WORK/batch-$i.job.json" 2>"$WORK/batch-$i.err" &
    SUBMITS+=("$!")
done
deadline=$((SECONDS + 60))
until [ "$(rcount)" -ge $((base + 3)) ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.05; done
emu_fault PUT paper-out || fail "batch: could not set paper-out on the emulator"
at_fault=$(($(rcount) - base))
wait "${SUBMITS[@]}"  # the submissions (not the services started in the background)
BATCH_IDS=()
for i in $(seq 1 "$BATCH_N"); do BATCH_IDS+=("$(jfield "$WORK/batch-$i.job.json" 'd["id"]' 2>/dev/null)"); done
echo "receipts saved when the paper ran out: $at_fault of $BATCH_N"
batch_states() { # one line per batch job: id state|detail
    timeout 15 "$PF" jobs list --printer tp1 --limit 100 --json >"$WORK/.batch.json" 2>/dev/null &&
        "$PY" -c 'import json,sys; js={j["id"]: j for j in json.load(open(sys.argv[1]))}
for i in sys.argv[2:]: j=js.get(i, {}); print(i, (j.get("state") or "?") + "|" + (j.get("detail") or ""))' "$WORK/.batch.json" "${BATCH_IDS[@]}"
}
batch_held() { batch_states | grep -q ' held|paper out$'; }
if [ "$at_fault" -ge "$BATCH_N" ]; then
    fail "batch: every job printed before the paper ran out (the batch was too quick)"
elif wait_for 30 "a batch job held for paper out" batch_held; then
    echo "while the paper is out (printfleet jobs list):"; batch_states | sed 's/^/   /'
    HELD_ID=$(batch_states | grep ' held|paper out$' | head -1 | cut -d' ' -f1)
    printer_status() { timeout 10 "$PF" printers list --json 2>/dev/null | "$PY" -c 'import json,sys; print({p["name"]: p["status"] for p in json.load(sys.stdin)}["tp1"])'; }
    printer_out() { [ "$(printer_status)" = "paper out" ]; }
    wait_for 15 "printers list to say paper out" printer_out || true
    echo "status of tp1 in printers list: $(printer_status)"
    held_receipts=$(($(rcount) - base))
    [ "$held_receipts" = "$at_fault" ] || fail "batch: the emulator saved receipts while out of paper ($at_fault -> $held_receipts)"
else
    fail "batch: no job was reported held for 'paper out' (now: $(batch_states | tr '\n' ' '))"
fi
emu_fault DELETE paper-out || fail "batch: could not clear paper-out"
all_printed() { [ "$(batch_states | grep -c ' printed|$')" = "$BATCH_N" ]; }
wait_for 60 "every batch job printed" all_printed || fail "batch: not every job printed (now: $(batch_states | tr '\n' ' '))"
wait_for 15 "the emulator to save every batch receipt" test "$(rcount)" -ge $((base + BATCH_N)) || true
batch_ok=0
for i in $(seq 1 "$BATCH_N"); do
    n=$(cat "$RCPT"/*.txt | grep -cx "batch-job-$i-of-$BATCH_N")
    [ "$n" = 1 ] && batch_ok=$((batch_ok + 1)) || fail "batch: batch-job-$i-of-$BATCH_N is on the emulator's paper $n times"
done
echo "on the emulator's paper exactly once: $batch_ok of $BATCH_N; receipts saved: $(($(rcount) - base))"
if [ -n "${HELD_ID:-}" ]; then
    timeout 30 "$PF" jobs show "$HELD_ID"
    timeout 15 "$PF" jobs show "$HELD_ID" --json >"$WORK/batch-held.show.json" 2>/dev/null
    "$PY" -c 'import json,sys; ev=[(e["state"], e["detail"]) for e in json.load(open(sys.argv[1]))["events"]]
sys.exit(0 if ("held","paper out") in ev and ev[-1][0]=="printed" and ev.index(("held","paper out")) < len(ev)-1 else 1)' "$WORK/batch-held.show.json" ||
        fail "batch: the held job's history lacks held (paper out) then printed"
fi
SUMMARY+=("batch: $batch_ok of $BATCH_N jobs printed exactly once; paper out after $at_fault, job ${HELD_ID:-?} held for it")

log "emupos event log"
sed 's/^/   /' "$WORK/emu/emupos.log" | tail -40

echo
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  emulator: $(timeout 30 "$EMUPOS" --version); work dir (logs, receipts as PNG/TXT): $WORK"
if [ "${#FAILURES[@]}" -eq 0 ]; then
    echo "PASS"
    exit 0
fi
for f in "${FAILURES[@]}"; do echo "  failed: $f"; done
echo "FAIL"
exit 1
