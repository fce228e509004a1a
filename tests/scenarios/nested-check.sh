# L2 check for vSMMU scenarios: every IOMMU with its devices, then the passthrough checks.
for i in /sys/class/iommu/*; do
    [ -e "$i" ] || continue
    echo "lab-l2: iommu ${i##*/}: $(ls $i/devices | tr '\n' ' ')"
done
echo "lab-l2: iommus $(ls /sys/class/iommu | wc -l)"
. ./passthrough-check.sh
