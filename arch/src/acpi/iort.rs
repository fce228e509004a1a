//! The IO Remapping Table (Arm DEN 0049E.d, table revision 5): how requester IDs of PCI root
//! complexes reach the GIC ITS (and, with the vSMMUv3 issue, the SMMUs on the way).
//!
//! [`Iort`] is a node graph: adding a node returns a [`NodeRef`], ID mappings name their output
//! node by it, and [`Iort::encode`] lays the nodes out and turns references into byte offsets.
//! New node kinds (SMMUv3, RMR) are new [`Node`] variants with their own body encoder; RC -> SMMU
//! -> ITS chains are just mappings whose output is the SMMU's [`NodeRef`].

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
const ITS_GROUP_REVISION: u8 = 1;
/// Root complex revision 3: the 36-byte layout with PASID capabilities (E.e's Flags is rev 4).
const ROOT_COMPLEX_REVISION: u8 = 3;

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
}

impl Node {
    fn kind(&self) -> (u8, u8) {
        match self {
            Node::ItsGroup { .. } => (NODE_ITS_GROUP, ITS_GROUP_REVISION),
            Node::RootComplex { .. } => (NODE_ROOT_COMPLEX, ROOT_COMPLEX_REVISION),
        }
    }

    fn mappings(&self) -> &[IdMapping] {
        match self {
            Node::ItsGroup { .. } => &[],
            Node::RootComplex { mappings, .. } => mappings,
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
        }
        body
    }

    fn len(&self) -> usize {
        NODE_HEADER_LEN + self.body().len() + ID_MAPPING_LEN * self.mappings().len()
    }
}

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
    /// one ID each; the node must fit the 16-bit length field. These are programming errors of
    /// the table functions, not properties of the plan, so they panic.
    pub fn add(&mut self, node: Node) -> NodeRef {
        assert!(
            node.mappings()
                .iter()
                .all(|m| m.output.0 < self.nodes.len() && m.count > 0),
            "an IORT mapping names a node not yet added, or no IDs"
        );
        assert!(node.len() <= usize::from(u16::MAX), "IORT node too long");
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
        }
        encode::table(*b"IORT", IORT_REVISION, &body)
    }
}
