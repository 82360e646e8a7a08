//! RFC 6962 / RFC 9162 Merkle tree over SHA-256: leaf and node hashing with
//! domain separation, tree heads, inclusion and consistency proofs, and their
//! verification.
//!
//! # Layout
//! - [`leaf_hash`], [`node_hash`], [`EMPTY_ROOT`].
//! - [`Edge`]: the right edge (one subtree root per set bit of the size):
//!   O(log n) append and root without leaves.
//! - [`Tree`]: leaf hashes plus the edge, for proofs at any size.
//! - [`Tree::root_at`], [`Tree::inclusion_proof`], [`Tree::consistency_proof`]:
//!   RFC 6962 §2.1 MTH / PATH / PROOF for any earlier size.
//! - [`verify_inclusion`], [`verify_consistency`]: RFC 9162 §2.1.3.2 and
//!   §2.1.4.2, the algorithms a third party runs.
//!
//! SHA-256 comes from ring (the agent's one crypto stack, shared with rustls).
use ring::digest::{Context, SHA256};

pub type Hash = [u8; 32];

/// Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
    0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0]);
    c.update(data);
    c.finish().as_ref().try_into().expect("32 bytes")
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[1]);
    c.update(left);
    c.update(right);
    c.finish().as_ref().try_into().expect("32 bytes")
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("size {old} is larger than size {new}")]
    SizeRegression { old: u64, new: u64 },
    #[error("proof has {got} hashes, expected {want}")]
    WrongLength { got: usize, want: usize },
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// The right edge of a tree: one subtree root per set bit of the size,
/// largest first. Enough to append and to compute the current root in
/// O(log n) without keeping leaves (the writer's state, and where a
/// verifier resumes after retention deleted older segments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    nodes: Vec<(u64, Hash)>,
}

impl Edge {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns its index.
    pub fn push_hash(&mut self, h: Hash) -> u64 {
        let index = self.size;
        self.size += 1;
        let mut node = (1u64, h);
        // Merge equal-sized subtrees on the right edge (binary carry).
        while let Some(&(size, left)) = self.nodes.last() {
            if size != node.0 {
                break;
            }
            self.nodes.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        index
    }

    /// The current root (tree head).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else { return EMPTY_ROOT };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// The subtree roots, largest first (their sizes follow from `size`).
    pub fn hashes(&self) -> Vec<Hash> {
        self.nodes.iter().map(|(_, h)| *h).collect()
    }

    /// Rebuilds an edge from `size` and its subtree roots (largest first).
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Self> {
        let sizes: Vec<u64> = (0..64).rev().map(|b| 1u64 << b).filter(|b| size & b != 0).collect();
        (sizes.len() == hashes.len()).then(|| Edge { size, nodes: sizes.into_iter().zip(hashes.iter().copied()).collect() })
    }
}

/// An append-only Merkle tree keeping every leaf hash (for proofs at any
/// earlier size) plus its right edge.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    leaves: Vec<Hash>,
    edge: Edge,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// Appends a leaf (its data, hashed here); returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_hash(leaf_hash(data))
    }

    pub fn push_hash(&mut self, h: Hash) -> u64 {
        self.leaves.push(h);
        self.edge.push_hash(h)
    }

    /// The current root (tree head).
    pub fn root(&self) -> Hash {
        self.edge.root()
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.leaves.get(index as usize).copied()
    }

    /// MTH(D[lo..hi]) over stored leaf hashes (RFC 6962 §2.1).
    fn mth(&self, lo: u64, hi: u64) -> Hash {
        match hi - lo {
            0 => EMPTY_ROOT,
            1 => self.leaves[lo as usize],
            n => {
                let k = split(n);
                node_hash(&self.mth(lo, lo + k), &self.mth(lo + k, hi))
            }
        }
    }

    /// The root the tree had at `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeRegression { old: size, new: self.size() });
        }
        Ok(self.mth(0, size))
    }

    /// PATH(index, D[0..size]) (RFC 6962 §2.1.1), leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size() {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.mth(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.mth(lo, lo + k));
        }
    }

    /// PROOF(old, D[0..new]) (RFC 6962 §2.1.2).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if old > new || new > self.size() {
            return Err(ProofError::SizeRegression { old, new });
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out);
        }
        Ok(out)
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.mth(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out);
            out.push(self.mth(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.mth(lo, lo + k));
        }
    }
}

/// Verifies that `leaf` (its hash) is at `index` in the tree of `size` with
/// `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength { got: proof.len(), want: proof.len() - 1 });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength { got: proof.len(), want: proof.len() + 1 });
    }
    if &r == root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

/// Verifies that the tree of `new_size`/`new_root` extends the tree of
/// `old_size`/`old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeRegression { old: old_size, new: new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { got: proof.len(), want: 0 });
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if old_size == 0 {
        // Anything extends the empty tree.
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::WrongLength { got: proof.len(), want: 0 }) };
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old_size.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength { got: 0, want: 1 });
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength { got: proof.len(), want: proof.len() - 1 });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength { got: proof.len(), want: proof.len() + 1 });
    }
    if &fr == old_root && &sr == new_root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// MTH straight from the RFC's recursive definition over raw data (an
    /// independent reference for the incremental root and the proofs).
    fn reference_mth(data: &[Vec<u8>]) -> Hash {
        match data.len() {
            0 => EMPTY_ROOT,
            1 => leaf_hash(&data[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_mth(&data[..k]), &reference_mth(&data[k..]))
            }
        }
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("record {i}").into_bytes()).collect()
    }

    #[test]
    fn known_values() {
        assert_eq!(hex(&Tree::new().root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // RFC 6962 leaf of the empty string: SHA-256(0x00).
        assert_eq!(hex(&leaf_hash(b"")), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    }

    #[test]
    fn roots_match_the_reference_at_every_size() {
        let d = data(70);
        let mut t = Tree::new();
        for (i, rec) in d.iter().enumerate() {
            t.push(rec);
            assert_eq!(t.root(), reference_mth(&d[..=i]), "size {}", i + 1);
        }
        for n in 0..=70 {
            assert_eq!(t.root_at(n).unwrap(), reference_mth(&d[..n as usize]));
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let d = data(33);
        let mut t = Tree::new();
        d.iter().for_each(|r| {
            t.push(r);
        });
        for size in 1..=33u64 {
            let root = t.root_at(size).unwrap();
            for i in 0..size {
                let p = t.inclusion_proof(i, size).unwrap();
                let leaf = leaf_hash(&d[i as usize]);
                verify_inclusion(&leaf, i, size, &p, &root).unwrap();
                assert_eq!(verify_inclusion(&leaf_hash(b"other"), i, size, &p, &root), Err(ProofError::RootMismatch));
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(verify_inclusion(&leaf, i, size, &bad, &root).is_err());
                    assert!(verify_inclusion(&leaf, i, size, &p[1..], &root).is_err());
                }
            }
        }
        assert_eq!(t.inclusion_proof(5, 5), Err(ProofError::IndexOutOfRange { index: 5, size: 5 }));
    }

    /// Roots and proofs agree with ct-merkle, an independent implementation,
    /// in both directions.
    #[test]
    fn cross_checked_with_ct_merkle() {
        use ct_merkle::{ConsistencyProof, InclusionProof, mem_backed_tree::MemoryBackedTree};
        use sha2::Sha256;
        type Out = sha2::digest::Output<Sha256>;
        let to_out = |h: &Hash| -> Out { (*h).into() };
        let d = data(40);
        let mut ours = Tree::new();
        let mut theirs: MemoryBackedTree<Sha256, Vec<u8>> = MemoryBackedTree::new();
        let mut old_roots = Vec::new();
        for (i, rec) in d.iter().enumerate() {
            ours.push(rec);
            theirs.push(rec.clone());
            let their_root = theirs.root();
            assert_eq!(their_root.as_bytes().as_slice(), ours.root().as_slice(), "root at size {}", i + 1);
            let size = i as u64 + 1;
            for j in 0..size {
                let p: Vec<Out> = ours.inclusion_proof(j, size).unwrap().iter().map(to_out).collect();
                their_root.verify_inclusion(&d[j as usize], j, &InclusionProof::<Sha256>::from_digests(p.iter())).unwrap();
                let their_proof = theirs.prove_inclusion(j as usize);
                let hashes: Vec<Hash> = their_proof.as_bytes().chunks(32).map(|c| c.try_into().unwrap()).collect();
                verify_inclusion(&leaf_hash(&d[j as usize]), j, size, &hashes, &ours.root()).unwrap();
            }
            for (old_size, old_root) in &old_roots {
                let p: Vec<Out> = ours.consistency_proof(*old_size, size).unwrap().iter().map(to_out).collect();
                their_root.verify_consistency(old_root, &ConsistencyProof::<Sha256>::from_digests(p.iter())).unwrap();
            }
            old_roots.push((size, their_root));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_forks_fail() {
        let d = data(40);
        let mut t = Tree::new();
        d.iter().for_each(|r| {
            t.push(r);
        });
        for new in 0..=40u64 {
            for old in 0..=new {
                let p = t.consistency_proof(old, new).unwrap();
                let (ro, rn) = (t.root_at(old).unwrap(), t.root_at(new).unwrap());
                verify_consistency(old, new, &ro, &rn, &p).unwrap_or_else(|e| panic!("{old}->{new}: {e}"));
                if old > 0 && old < new {
                    // A fork: the same old size with a different history.
                    let mut forked = d[..old as usize].to_vec();
                    forked[0] = b"rewritten".to_vec();
                    assert!(verify_consistency(old, new, &reference_mth(&forked), &rn, &p).is_err(), "{old}->{new}");
                }
            }
        }
        assert_eq!(verify_consistency(5, 4, &EMPTY_ROOT, &EMPTY_ROOT, &[]), Err(ProofError::SizeRegression { old: 5, new: 4 }));
    }
}
