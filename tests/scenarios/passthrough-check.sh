# L2 check for passthrough scenarios: list PCI functions, checksum every disk, show that each
# passed-through device took MSI-X interrupts.
for d in /sys/bus/pci/devices/*; do
    echo "lab-l2: pci ${d##*/} $(sed 's/^0x//' $d/vendor):$(sed 's/^0x//' $d/device) driver=$(basename "$(readlink $d/driver)" 2>/dev/null)"
done
for disk in /dev/vda /dev/nvme0n1; do
    [ -b $disk ] && sha256sum $disk
done
# Sum each driver's interrupt counts over all CPUs (the per-CPU columns only), separately for
# message-signalled and for wired (INTx) interrupts.
cpus=$(head -n 1 /proc/interrupts | wc -w)
for name in virtio nvme e1000e; do
    for kind in msix intx; do
        total=$(awk -v n=$name -v c=$cpus -v k=$kind '
            $0 ~ n && ((k == "msix") == ($0 ~ /MSI/)) { for (i = 2; i <= c + 1; i++) s += $i }
            END { print s + 0 }' /proc/interrupts)
        echo "lab-l2: $kind $name $total"
    done
done
grep -E 'virtio|nvme|e1000e' /proc/interrupts || true
