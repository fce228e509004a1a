# L2 side of the benchmark, the same under both VMMs: name the IOMMUs (the L1 probe finds the vSMMU
# registers by them), go idle for the memory sample, then the workload (both disks read twice,
# checksummed) inside the tracing window, then O_DIRECT read throughput.
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
    echo "@@BENCH workload begin"
    sleep 1
    for pass in 1 2; do
        # Drop the cached blocks so the second pass reads the devices again.
        for d in $disks; do blockdev --flushbufs $d; done
        sha256sum $disks
    done
    echo "@@BENCH workload end"
    for d in $disks; do
        labcheck read-bench $d 4096 8388608
        labcheck read-bench $d 1048576
    done
fi
