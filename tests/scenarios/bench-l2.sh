# L2 side of the benchmark, the same under both VMMs: name the IOMMUs (the L1 probe finds the vSMMU
# registers by them), go idle for the memory sample, checksum both disks, then the workload inside
# the tracing window, then O_DIRECT read throughput.
for i in /sys/class/iommu/*; do
    [ -e "$i" ] || continue
    echo "lab-l2: iommu ${i##*/}: $(ls $i/devices | tr '\n' ' ')"
done
echo "@@BENCH idle"
sleep 4
disks=
for d in /dev/vda /dev/nvme0n1; do
    [ -b $d ] && disks="$disks $d"
done
if [ -n "$disks" ]; then
    sha256sum $disks
    # The workload the invalidations are counted over: both disks read twice with O_DIRECT in
    # 64 KiB requests, the same number of DMA maps and unmaps under either VMM.
    echo "@@BENCH workload begin"
    sleep 1
    for pass in 1 2; do
        for d in $disks; do labcheck read-bench $d 65536 >/dev/null; done
    done
    echo "@@BENCH workload end"
    for d in $disks; do
        labcheck read-bench $d 4096 8388608
        labcheck read-bench $d 1048576
    done
fi
