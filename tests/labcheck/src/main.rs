//! `labcheck`: the lab's own checks, run inside L1 by scenario scripts.
//!
//! Each check prints `labcheck: <check> ok ...` per item or `labcheck: <check> FAILED ...` with the
//! reason and exits 1, so a scenario asserts on console lines.
//!
//!   labcheck iommus                    list IOMMU instances and their PCI devices
//!   labcheck groups BDF[,BDF..] ...    each group behind one IOMMU, groups behind different ones
//!   labcheck vfio BDF...               cdev bound to iommufd and attached to a mapped IOAS
//!   labcheck nesting BDF...            the SMMUv3 nesting sequence on each device's SMMU
//!   labcheck nested-backend BDF...     microvmm's nested vSMMU backend on each device's SMMU
//!   labcheck kvm                       /dev/kvm creates a VM and a vCPU
//!   labcheck vmm-run NAME MIB -- CMD   run a VMM, time and measure its guest (benchmark)
//!   labcheck read-bench DEV BLOCK [N]  sequential O_DIRECT read throughput (benchmark, in L2)

mod bench;
mod iommu;
mod sysfs;

use std::process::ExitCode;

use sysfs::{Bdf, Sysfs};

const USAGE: &str = "usage: labcheck iommus | groups BDF[,BDF..]... | vfio BDF... | nesting BDF... \
     | nested-backend BDF... | kvm | vmm-run NAME MIB -- CMD... | read-bench DEV BLOCK [BYTES]";

use vmm::error_chain as chain;

fn parse_bdfs(args: &[String]) -> Result<Vec<Bdf>, String> {
    if args.is_empty() {
        return Err("no PCI devices given".into());
    }
    args.iter()
        .map(|a| a.parse().map_err(|e: sysfs::SysfsError| e.to_string()))
        .collect()
}

fn per_device(
    check: &str,
    args: &[String],
    run: impl Fn(Bdf) -> Result<String, iommu::IommuError>,
) -> Result<(), String> {
    let sys = Sysfs::new("/sys");
    let mut failed = false;
    for bdf in parse_bdfs(args)? {
        let outcome = sys.vfio_cdev(bdf).map_err(|e| chain(&e)).and_then(|cdev| {
            let iommu = sys.iommu_of(bdf).map_err(|e| chain(&e))?;
            let detail = run(bdf).map_err(|e| chain(&e))?;
            Ok(format!("{cdev} on {iommu}: {detail}"))
        });
        match outcome {
            Ok(text) => println!("labcheck: {check} ok {bdf} {text}"),
            Err(reason) => {
                println!("labcheck: {check} FAILED {bdf}: {reason}");
                failed = true;
            }
        }
    }
    if failed {
        Err(format!("{check} failed on at least one device"))
    } else {
        Ok(())
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    match cmd.as_str() {
        "iommus" => {
            let iommus = Sysfs::new("/sys").iommus().map_err(|e| chain(&e))?;
            for (name, devices) in iommus {
                let list: Vec<String> = devices.iter().map(Bdf::to_string).collect();
                println!("labcheck: iommu {name}: {}", list.join(" "));
            }
            Ok(())
        }
        "groups" => {
            let groups = rest
                .iter()
                .map(|g| parse_bdfs(&g.split(',').map(str::to_string).collect::<Vec<_>>()))
                .collect::<Result<Vec<_>, _>>()?;
            if groups.is_empty() {
                return Err("no groups given".into());
            }
            let found = Sysfs::new("/sys")
                .check_groups(&groups)
                .map_err(|e| chain(&e))?;
            for (group, iommu) in rest.iter().zip(found) {
                println!("labcheck: groups ok {group} -> {iommu}");
            }
            Ok(())
        }
        "vfio" => per_device("vfio", rest, iommu::check_vfio),
        "nesting" => per_device("nesting", rest, iommu::check_nesting),
        "nested-backend" => per_device("nested-backend", rest, iommu::check_nested_backend),
        "kvm" => {
            let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("opening /dev/kvm: {e}"))?;
            let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
            vm.create_vcpu(0)
                .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
            println!(
                "labcheck: kvm ok api={} max_vcpus={}",
                kvm.get_api_version(),
                kvm.get_max_vcpus()
            );
            Ok(())
        }
        "vmm-run" => bench::vmm_run(rest),
        "read-bench" => bench::read_bench(rest),
        other => Err(format!("unknown check '{other}'; {USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            println!("labcheck: FAILED: {reason}");
            ExitCode::FAILURE
        }
    }
}
