#![no_main]
// Body shared with the stable corpus replay: pcie_iommu::fuzz::smmu_event.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pcie_iommu::fuzz::smmu_event(data));
