# L1 side of the benchmark: microvmm and QEMU take turns, BENCH_REPEATS times (default 1), on the
# same L2 kernel, initramfs, 2 vCPUs, 512 MiB and the same two passed-through disks.
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
repeats=${BENCH_REPEATS:-1}
mib=512
strict="iommu.passthrough=0 iommu.strict=1"

microvmm_dt() {
    labcheck vmm-run microvmm:dt-nodev $mib -- microvmm --kernel "$L2_KERNEL" \
        --initramfs "$L2_INITRAMFS" --cmdline "console=ttyAMA0 panic=-1" --cpus 2 --memory ${mib}M \
        --boot dt --log-level info
}
qemu_dt() {
    labcheck vmm-run qemu:dt-nodev $mib -- qemu-system-aarch64 -M virt,gic-version=3 \
        -accel kvm -cpu host -smp 2 -m ${mib}M -nodefaults -display none -monitor none \
        -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd "$L2_INITRAMFS" \
        -append "console=ttyAMA0 panic=-1"
}
microvmm_smmu() {
    labcheck vmm-run microvmm:acpi-2smmu $mib -- microvmm --kernel "$L2_KERNEL" \
        --initramfs "$L2_INITRAMFS" --cmdline "console=ttyAMA0 panic=-1 $strict" --cpus 2 \
        --memory ${mib}M --boot acpi --iommu nested-smmuv3 --stats --log-level info \
        --device vfio="$DEV_disk0" --device vfio="$DEV_nvme0"
}
# QEMU's own way to the same guest: one accel vSMMU per host SMMU, each on its own pxb-pcie, and
# edk2, which QEMU needs to give an arm64 guest ACPI tables.
qemu_smmu() {
    labcheck vmm-run qemu:acpi-2smmu $mib -- qemu-system-aarch64 -M virt,gic-version=3 \
        -accel kvm -cpu host -smp 2 -m ${mib}M -nodefaults -display none -monitor none \
        -serial stdio -no-reboot -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
        -kernel "$L2_KERNEL" -initrd "$L2_INITRAMFS" -append "console=ttyAMA0 panic=-1 $strict" \
        -object iommufd,id=iommufd0 \
        -device pxb-pcie,id=pcie.1,bus_nr=1,bus=pcie.0 \
        -device arm-smmuv3,primary-bus=pcie.1,id=smmuv3.1,accel=on \
        -device pcie-root-port,id=rp1,bus=pcie.1,chassis=1 \
        -device vfio-pci,host="$DEV_disk0",bus=rp1,iommufd=iommufd0 \
        -device pxb-pcie,id=pcie.2,bus_nr=8,bus=pcie.0 \
        -device arm-smmuv3,primary-bus=pcie.2,id=smmuv3.2,accel=on \
        -device pcie-root-port,id=rp2,bus=pcie.2,chassis=2 \
        -device vfio-pci,host="$DEV_nvme0",bus=rp2,iommufd=iommufd0
}

i=1
while [ $i -le "$repeats" ]; do
    echo "@@BENCH repeat $i of $repeats"
    microvmm_dt
    qemu_dt
    microvmm_smmu
    qemu_smmu
    i=$((i + 1))
done
echo "@@BENCH done repeats=$repeats"
