//! The IO Remapping Table (Arm DEN 0049E.d, table revision 5): how requester IDs of PCI root
//! complexes reach the GIC ITS, through an SMMUv3 where the bridge has one, and which memory
//! ranges an SMMU's streams must keep identity-mapped (RMR).
//!
//! [`Iort`] is a node graph: adding a node returns a [`NodeRef`], ID mappings name their output
//! node by it, and [`Iort::encode`] lays the nodes out and turns references into byte offsets.
//! Each [`Node`] variant has its own body encoder; RC -> SMMU -> ITS chains are just mappings
//! whose output is the SMMU's [`NodeRef`].

use acpi_tables::AmlSink;

use super::Encoded;
use super::encode::{self, HEADER_LEN};

/// Table revision 5: IORT issue E.d (node identifiers, RMR support in Linux).
pub const IORT_REVISION: u8 = 5;
/// Node count, node array offset, reserved.
const IORT_FIXED_LEN: usize = HEADER_LEN + 12;

/// Node types (E.d table 4) and the revisions issue E.d gives them.
pub const NODE_ITS_GROUP: u8 = 0;
pub const NODE_ROOT_COMPLEX: u8 = 2;
pub const NODE_SMMU_V3: u8 = 4;
pub const NODE_RMR: u8 = 6;
const ITS_GROUP_REVISION: u8 = 1;
/// Root complex revision 3: the 36-byte layout with PASID capabilities (E.e's Flags is rev 4).
const ROOT_COMPLEX_REVISION: u8 = 3;
/// SMMUv3 revision 4 (E.d; E.e's DeviceID-valid flag is rev 5). In a revision 4 node the DeviceID
/// mapping index is ignored only when all four GSIVs are non-zero (Linux
/// `iort_get_id_mapping_index`); otherwise mapping 0 would be taken for the SMMU's own MSIs and
/// skipped when routing the StreamIDs to the ITS.
const SMMU_V3_REVISION: u8 = 4;
/// RMR revision 3: E.d's flags with memory access attributes (revision 2 was E.c's, deprecated).
const RMR_REVISION: u8 = 3;

/// Type, length, revision, identifier, mapping count, mapping array offset.
pub const NODE_HEADER_LEN: usize = 16;
/// Input base, number of IDs (minus one), output base, output reference, flags.
pub const ID_MAPPING_LEN: usize = 20;

/// Memory access properties (E.d §3.1.1.2): cache-coherent attribute 1, and memory access flags
/// CPM (coherent path to memory) and DACS (device attributes are cacheable, inner shareable), as
/// for a device whose DMA snoops the CPU caches, which every assigned device does under KVM.
const CCA_COHERENT: u32 = 1;
const MAF_CPM: u8 = 1 << 0;
const MAF_DACS: u8 = 1 << 1;
/// A root complex's DMA reaches all of the address space.
const MEMORY_ADDRESS_LIMIT_BITS: u8 = 64;

/// SMMUv3 flags (E.d table 10): COHACC override, the SMMU's table walks and queue accesses are
/// cache-coherent (the model reads guest RAM through the host's coherent mappings).
pub const SMMU_V3_COHACC_OVERRIDE: u32 = 1 << 0;
/// SMMUv3 model 0: generic, no erratum workarounds.
const SMMU_V3_MODEL_GENERIC: u32 = 0;
/// RMR flags (E.d table 17): bit 0 remapping permitted, bit 1 privileged access, bits 9:2 the
/// access attributes, of which 1 is Device-nGnRE.
pub const RMR_ATTR_SHIFT: u32 = 2;
pub const RMR_ATTR_DEVICE_NGNRE: u32 = 1;

/// A node added to an [`Iort`], for mappings to name as their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef(usize);

/// IDs `input_base .. input_base + count` of the node map to `output_base ..` in the `output`
/// node's ID space (E.d §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub input_base: u32,
    /// How many IDs (at least one); the table stores this minus one.
    pub count: u32,
    pub output_base: u32,
    pub output: NodeRef,
}

/// One IORT node and its node-specific data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// GIC ITSs, by the GIC ITS IDs of the MADT's ITS structures.
    ItsGroup { its_ids: Vec<u32> },
    /// A PCI root complex: one PCI segment, coherent DMA.
    RootComplex {
        segment: u16,
        /// ATS attribute bits (0: no ATS, the root complex does not pass ATS through).
        ats: u32,
        mappings: Vec<IdMapping>,
    },
    /// An SMMUv3 with wired interrupts and no MSIs of its own: `mappings` take its StreamIDs on
    /// (to the ITS group, for the MSIs of the devices behind it).
    Smmuv3 {
        /// Register page 0 (page 1 follows at +64 KiB).
        base: u64,
        flags: u32,
        /// Interrupt IDs (GSIVs), edge-triggered.
        event_gsiv: u32,
        pri_gsiv: u32,
        gerror_gsiv: u32,
        sync_gsiv: u32,
        mappings: Vec<IdMapping>,
    },
    /// Reserved memory ranges that the streams `mappings` name (their output IDs, at the SMMU
    /// they output to) must keep identity-mapped.
    Rmr {
        flags: u32,
        ranges: Vec<(u64, u64)>,
        mappings: Vec<IdMapping>,
    },
}

impl Node {
    fn kind(&self) -> (u8, u8) {
        match self {
            Node::ItsGroup { .. } => (NODE_ITS_GROUP, ITS_GROUP_REVISION),
            Node::RootComplex { .. } => (NODE_ROOT_COMPLEX, ROOT_COMPLEX_REVISION),
            Node::Smmuv3 { .. } => (NODE_SMMU_V3, SMMU_V3_REVISION),
            Node::Rmr { .. } => (NODE_RMR, RMR_REVISION),
        }
    }

    fn mappings(&self) -> &[IdMapping] {
        match self {
            Node::ItsGroup { .. } => &[],
            Node::RootComplex { mappings, .. }
            | Node::Smmuv3 { mappings, .. }
            | Node::Rmr { mappings, .. } => mappings,
        }
    }

    /// The node-specific data between the header and the ID mapping array.
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Node::ItsGroup { its_ids } => {
                body.dword(its_ids.len() as u32);
                for &id in its_ids {
                    body.dword(id);
                }
            }
            Node::RootComplex { segment, ats, .. } => {
                memory_access_coherent(&mut body);
                body.dword(*ats);
                body.dword(u32::from(*segment));
                body.byte(MEMORY_ADDRESS_LIMIT_BITS);
                body.word(0); // PASID capabilities: none
                body.byte(0); // Reserved
            }
            Node::Smmuv3 {
                base,
                flags,
                event_gsiv,
                pri_gsiv,
                gerror_gsiv,
                sync_gsiv,
                ..
            } => {
                body.qword(*base);
                body.dword(*flags);
                body.dword(0); // Reserved
                body.qword(0); // VATOS address: none
                body.dword(SMMU_V3_MODEL_GENERIC);
                body.dword(*event_gsiv);
                body.dword(*pri_gsiv);
                body.dword(*gerror_gsiv);
                body.dword(*sync_gsiv);
                body.dword(0); // Proximity domain: not valid (flags bit 3 clear)
                body.dword(0); // DeviceID mapping index: ignored, every GSIV is wired
            }
            Node::Rmr {
                flags,
                ranges,
                mappings,
            } => {
                body.dword(*flags);
                body.dword(ranges.len() as u32);
                // The descriptors follow the ID mapping array (see `trailer`).
                let offset = NODE_HEADER_LEN + RMR_BODY_LEN + ID_MAPPING_LEN * mappings.len();
                body.dword(offset as u32);
            }
        }
        body
    }

    /// What follows the ID mapping array: an RMR's memory range descriptors.
    fn trailer(&self) -> Vec<u8> {
        let mut trailer = Vec::new();
        if let Node::Rmr { ranges, .. } = self {
            for &(base, length) in ranges {
                trailer.qword(base);
                trailer.qword(length);
                trailer.dword(0); // Reserved
            }
        }
        trailer
    }

    fn len(&self) -> usize {
        NODE_HEADER_LEN
            + self.body().len()
            + ID_MAPPING_LEN * self.mappings().len()
            + self.trailer().len()
    }
}

/// An RMR's flags, descriptor count and descriptor offset.
const RMR_BODY_LEN: usize = 12;

fn memory_access_coherent(body: &mut Vec<u8>) {
    body.dword(CCA_COHERENT);
    body.byte(0); // Allocation hints: none
    body.word(0); // Reserved
    body.byte(MAF_CPM | MAF_DACS);
}

/// The IORT under construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iort {
    nodes: Vec<Node>,
}

impl Iort {
    pub fn new() -> Self {
        Iort::default()
    }

    /// Appends `node`. Its mappings may only name nodes added before it and must cover at least
    /// one ID each; the node must fit the 16-bit length field; an RMR needs a range and a
    /// mapping. These are programming errors of the table functions, not properties of the plan,
    /// so they panic.
    pub fn add(&mut self, node: Node) -> NodeRef {
        assert!(
            node.mappings()
                .iter()
                .all(|m| m.output.0 < self.nodes.len() && m.count > 0),
            "an IORT mapping names a node not yet added, or no IDs"
        );
        assert!(node.len() <= usize::from(u16::MAX), "IORT node too long");
        if let Node::Rmr {
            ranges, mappings, ..
        } = &node
        {
            // Linux skips an RMR node without either (`iort_node_get_rmr_info`).
            assert!(
                !ranges.is_empty() && !mappings.is_empty(),
                "an IORT RMR node needs ranges and streams"
            );
        }
        self.nodes.push(node);
        NodeRef(self.nodes.len() - 1)
    }

    /// The table: nodes in the order added, each with its index as its identifier.
    pub fn encode(&self) -> Encoded {
        let mut offsets = Vec::with_capacity(self.nodes.len());
        let mut next = IORT_FIXED_LEN;
        for node in &self.nodes {
            offsets.push(next as u32);
            next += node.len();
        }

        let mut body = Vec::new();
        body.dword(self.nodes.len() as u32);
        body.dword(IORT_FIXED_LEN as u32);
        body.dword(0);
        for (index, node) in self.nodes.iter().enumerate() {
            let (kind, revision) = node.kind();
            let data = node.body();
            let mappings = node.mappings();
            body.byte(kind);
            body.word(node.len() as u16);
            body.byte(revision);
            body.dword(index as u32); // Identifier
            body.dword(mappings.len() as u32);
            let array = if mappings.is_empty() {
                0
            } else {
                NODE_HEADER_LEN + data.len()
            };
            body.dword(array as u32);
            body.extend_from_slice(&data);
            for m in mappings {
                body.dword(m.input_base);
                body.dword(m.count - 1);
                body.dword(m.output_base);
                body.dword(offsets[m.output.0]);
                body.dword(0); // Flags: a range, not a single mapping
            }
            body.extend_from_slice(&node.trailer());
        }
        encode::table(*b"IORT", IORT_REVISION, &body)
    }
}
