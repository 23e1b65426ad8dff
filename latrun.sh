#!/bin/bash
# latrun.sh BIN VMID: one full backup of the 1 GiB null-co source with 5 ms latency per read, through BIN's daemon
cd /work/scratch; ./harness.sh stop >/dev/null 2>&1; sleep 0.5
DLL=/work/scratch/$1/dirbackupd.dll LOGLEVEL=warn ./harness.sh start >/dev/null 2>&1
rm -rf h/store/$2; cd /work/main
s=$(date +%s%N)
DIRBACKUP_SOCKET=/work/scratch/h/d.sock perl -T -I perl-shim -I tests/perl/lib tools/vzdump-vm --storeid bench --path /work/scratch/h/store --vmid $2 --config /work/main/.build/bench/vm/vm.conf --device drive-scsi0=1073741824 --nbd-path /work/scratch/h/lat.sock --start-time 1700000000 >/tmp/lat.json 2>&1 || { echo FAIL; tail -3 /tmp/lat.json; }
e=$(date +%s%N); echo "$1: $(( (e-s)/1000000 )) ms"; rm -rf /work/scratch/h/store/$2
