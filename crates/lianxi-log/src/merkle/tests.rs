//! The tree algorithms against three references: published RFC 6962 test
//! vectors, a naive recursive implementation of the RFC's definitions, and
//! the `ct-merkle` crate (an independent implementation, used here only as
//! an oracle).

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use sha2_011::Sha256 as CtSha256;

use super::*;

fn hd(s: &str) -> Hash {
    hex::decode(s)
        .ok()
        .and_then(|v| Hash::try_from(v.as_slice()).ok())
        .unwrap_or_else(|| panic!("bad test hex {s}"))
}

// --- the naive reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 verbatim ---

fn naive_mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
        }
    }
}

fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return vec![];
    }
    let k = split(n as u64) as usize;
    if m < k {
        let mut p = naive_path(m, &leaves[..k]);
        p.push(naive_mth(&leaves[k..]));
        p
    } else {
        let mut p = naive_path(m - k, &leaves[k..]);
        p.push(naive_mth(&leaves[..k]));
        p
    }
}

fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole {
            vec![]
        } else {
            vec![naive_mth(leaves)]
        };
    }
    let k = split(n as u64) as usize;
    if m <= k {
        let mut p = naive_subproof(m, &leaves[..k], whole);
        p.push(naive_mth(&leaves[k..]));
        p
    } else {
        let mut p = naive_subproof(m - k, &leaves[k..], false);
        p.push(naive_mth(&leaves[..k]));
        p
    }
}

/// Perfect subtrees built level by level from the leaves, independently of
/// `append_leaf`.
struct Mem(Vec<Vec<Hash>>);

impl Mem {
    fn new(leaves: &[Hash]) -> Mem {
        let mut levels = vec![leaves.to_vec()];
        while let Some(last) = levels.last().filter(|l| l.len() >= 2) {
            let up = last
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        Mem(levels)
    }
}

impl Nodes for Mem {
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        self.0
            .get(usize::from(level))
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| crate::tiles::missing(level, index))
    }
}

fn inputs(n: usize) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| Sha256::digest(i.to_be_bytes()).into())
        .collect()
}

fn flip(h: &Hash) -> Hash {
    let mut h = *h;
    h[7] ^= 0x20;
    h
}

// --- known answers ---

/// `LeafInputs()` of transparency-dev/merkle `testonly/constants.go` (the
/// same leaves as certificate-transparency's C++ `merkle_tree_test.cc`).
fn kat_leaves() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|s| hex::decode(s).unwrap_or_default())
    .collect()
}

/// `RootHashes()` of the same file: MTH of the first 1..=8 leaves.
const KAT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn known_answer_vectors_from_transparency_dev_merkle() {
    assert_eq!(
        empty_root(),
        hd("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    let leaves: Vec<Hash> = kat_leaves().iter().map(|l| leaf_hash(l)).collect();
    let mem = Mem::new(&leaves);
    for (i, want) in KAT_ROOTS.iter().enumerate() {
        let size = i as u64 + 1;
        assert_eq!(root(&mem, size, 8).unwrap(), hd(want), "root of {size}");
    }
    let root8 = hd(KAT_ROOTS[7]);

    // Inclusion proofs for leaves 0 and 5 of the 8-leaf tree (`InclusionProofs`
    // in the same file; also avb's libavb_aftl RFC 6962 verifier tests).
    let inclusion = [
        (
            0u64,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, want) in inclusion {
        let want: Vec<Hash> = want.iter().map(|s| hd(s)).collect();
        assert_eq!(inclusion_proof(&mem, index, 8, 8).unwrap(), want);
        assert!(verify_inclusion(
            &leaves[index as usize],
            index,
            8,
            &want,
            &root8
        ));
    }

    // Consistency proofs (`ConsistencyProofs` in the same file).
    let consistency: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, want) in consistency {
        let want: Vec<Hash> = want.iter().map(|s| hd(s)).collect();
        assert_eq!(consistency_proof(&mem, old, new, 8).unwrap(), want);
        let (old_root, new_root) = (
            hd(KAT_ROOTS[old as usize - 1]),
            hd(KAT_ROOTS[new as usize - 1]),
        );
        assert!(verify_consistency(old, new, &old_root, &new_root, &want));
    }
}

// --- exhaustive against the naive definitions and ct-merkle ---

fn ct_root(t: &MemoryBackedTree<CtSha256, Hash>) -> Hash {
    Hash::try_from(t.root().as_bytes().as_slice()).unwrap_or([0; 32])
}

#[test]
fn roots_and_proofs_match_the_rfc_definitions_and_ct_merkle_up_to_70() {
    const N: usize = 70;
    let data = inputs(N);
    let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
    let mem = Mem::new(&leaves);
    let mut ct = MemoryBackedTree::<CtSha256, Hash>::new();
    assert_eq!(root(&mem, 0, N as u64).unwrap(), empty_root());
    assert_eq!(ct_root(&ct), empty_root());
    for n in 1..=N {
        ct.push(data[n - 1]);
        let size = n as u64;
        let r = root(&mem, size, N as u64).unwrap();
        assert_eq!(r, naive_mth(&leaves[..n]), "root of {n}");
        assert_eq!(r, ct_root(&ct), "root of {n} (ct-merkle)");
        let ct_r = RootHash::<CtSha256>::new(r.into(), size);

        for m in 0..n {
            let proof = inclusion_proof(&mem, m as u64, size, N as u64).unwrap();
            assert_eq!(proof, naive_path(m, &leaves[..n]), "path {m} of {n}");
            assert_eq!(
                proof.concat(),
                ct.prove_inclusion(m).as_bytes(),
                "path {m} of {n} (ct-merkle)"
            );
            let ct_proof = InclusionProof::<CtSha256>::from_bytes(proof.concat());
            assert!(ct_r.verify_inclusion(&data[m], m as u64, &ct_proof).is_ok());
            assert!(verify_inclusion(&leaves[m], m as u64, size, &proof, &r));
            // Every tampering fails: leaf, root, each hash, a hash added or
            // dropped, the index, the size.
            assert!(!verify_inclusion(
                &flip(&leaves[m]),
                m as u64,
                size,
                &proof,
                &r
            ));
            assert!(!verify_inclusion(
                &leaves[m],
                m as u64,
                size,
                &proof,
                &flip(&r)
            ));
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i]);
                assert!(!verify_inclusion(&leaves[m], m as u64, size, &bad, &r));
            }
            let mut longer = proof.clone();
            longer.push(r);
            assert!(!verify_inclusion(&leaves[m], m as u64, size, &longer, &r));
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(!verify_inclusion(&leaves[m], m as u64, size, shorter, &r));
            }
            if n > 1 {
                let other = (m + 1) % n;
                assert!(!verify_inclusion(
                    &leaves[m],
                    other as u64,
                    size,
                    &proof,
                    &r
                ));
            }
        }

        for old in 1..=n {
            let proof = consistency_proof(&mem, old as u64, size, N as u64).unwrap();
            assert_eq!(
                proof,
                naive_subproof(old, &leaves[..n], true),
                "consistency {old} -> {n}"
            );
            let old_root = naive_mth(&leaves[..old]);
            if old < n {
                assert_eq!(
                    proof.concat(),
                    ct.prove_consistency(n - old).as_bytes(),
                    "consistency {old} -> {n} (ct-merkle)"
                );
                let ct_proof = ConsistencyProof::<CtSha256>::try_from_bytes(proof.concat())
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let ct_old = RootHash::<CtSha256>::new(old_root.into(), old as u64);
                assert!(ct_r.verify_consistency(&ct_old, &ct_proof).is_ok());
            }
            let (o, s) = (old as u64, size);
            assert!(verify_consistency(o, s, &old_root, &r, &proof));
            assert!(!verify_consistency(o, s, &flip(&old_root), &r, &proof));
            assert!(!verify_consistency(o, s, &old_root, &flip(&r), &proof));
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i]);
                assert!(!verify_consistency(o, s, &old_root, &r, &bad));
            }
            let mut longer = proof.clone();
            longer.push(r);
            assert!(!verify_consistency(o, s, &old_root, &r, &longer));
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(!verify_consistency(o, s, &old_root, &r, shorter));
            }
            if old > 1 {
                let smaller = naive_mth(&leaves[..old - 1]);
                assert!(!verify_consistency(o - 1, s, &smaller, &r, &proof));
            }
        }
    }
}

#[test]
fn large_trees_match_the_naive_root() {
    let data = inputs(1025);
    let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
    let mem = Mem::new(&leaves);
    for size in [511usize, 512, 513, 1000, 1023, 1024, 1025] {
        let r = root(&mem, size as u64, 1025).unwrap();
        assert_eq!(r, naive_mth(&leaves[..size]), "root of {size}");
        for m in [0, 1, size / 2, size - 2, size - 1] {
            let p = inclusion_proof(&mem, m as u64, size as u64, 1025).unwrap();
            assert_eq!(p, naive_path(m, &leaves[..size]));
            assert!(verify_inclusion(&leaves[m], m as u64, size as u64, &p, &r));
        }
        for old in [1, 2, 3, 500, size - 1, size] {
            let p = consistency_proof(&mem, old as u64, size as u64, 1025).unwrap();
            assert_eq!(p, naive_subproof(old, &leaves[..size], true));
            let old_root = naive_mth(&leaves[..old]);
            assert!(verify_consistency(
                old as u64,
                size as u64,
                &old_root,
                &r,
                &p
            ));
        }
    }
}

#[test]
fn appending_creates_exactly_the_perfect_subtrees() {
    let data = inputs(300);
    let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
    let mem = Mem::new(&leaves);
    let mut frontier = Frontier::default();
    let mut stored: std::collections::BTreeMap<(u8, u64), Hash> = Default::default();
    for (i, leaf) in leaves.iter().enumerate() {
        let by_frontier = frontier.push(*leaf).unwrap();
        let by_reads = append_leaf(i as u64, *leaf, |l, j| {
            stored
                .get(&(l, j))
                .copied()
                .ok_or_else(|| crate::tiles::missing(l, j))
        })
        .unwrap();
        assert_eq!(by_frontier, by_reads, "leaf {i}");
        for (l, j, h) in by_reads {
            assert_eq!(Ok(h), mem.node(l, j).map_err(|e| e.to_string()));
            assert!(stored.insert((l, j), h).is_none(), "node {l}/{j} twice");
        }
        assert_eq!(
            frontier.root(),
            naive_mth(&leaves[..=i]),
            "root of {}",
            i + 1
        );
    }
    // 2n - popcount(n) perfect subtrees for n leaves.
    assert_eq!(stored.len(), 2 * 300 - 300u32.count_ones() as usize);
    assert_eq!(Frontier::default().root(), empty_root());
}

#[test]
fn out_of_range_arguments_are_errors_and_verifiers_say_no() {
    let leaves: Vec<Hash> = inputs(10).iter().map(|d| leaf_hash(d)).collect();
    let mem = Mem::new(&leaves);
    let out = |r: Result<Vec<Hash>>| matches!(r, Err(Error::OutOfRange { .. }));
    assert!(matches!(root(&mem, 11, 10), Err(Error::OutOfRange { .. })));
    assert!(matches!(
        root(&mem, u64::MAX, 10),
        Err(Error::OutOfRange { .. })
    ));
    assert!(out(inclusion_proof(&mem, 0, 0, 10)));
    assert!(out(inclusion_proof(&mem, 10, 10, 10)));
    assert!(out(inclusion_proof(&mem, 0, 11, 10)));
    assert!(out(inclusion_proof(&mem, u64::MAX, u64::MAX, 10)));
    assert!(out(consistency_proof(&mem, 0, 5, 10)));
    assert!(out(consistency_proof(&mem, 6, 5, 10)));
    assert!(out(consistency_proof(&mem, 1, 11, 10)));
    assert!(out(consistency_proof(&mem, 0, 0, 10)));
    assert!(out(consistency_proof(&mem, u64::MAX, u64::MAX, 10)));
    let e = inclusion_proof(&mem, 10, 10, 10).unwrap_err().to_string();
    assert!(e.contains("leaf index 10") && e.contains("0 to 9"), "{e}");

    let r = root(&mem, 10, 10).unwrap();
    let x = leaves[0];
    assert!(!verify_inclusion(&x, 0, 0, &[], &r));
    assert!(!verify_inclusion(&x, 5, 5, &[], &r));
    assert!(!verify_inclusion(&x, u64::MAX, u64::MAX, &[r; 70], &r));
    assert!(!verify_inclusion(&x, 0, u64::MAX, &[r; 70], &r));
    assert!(!verify_consistency(0, 0, &r, &r, &[]));
    assert!(!verify_consistency(0, 10, &empty_root(), &r, &[]));
    assert!(!verify_consistency(5, 4, &r, &r, &[]));
    assert!(!verify_consistency(3, 10, &r, &r, &[]));
    assert!(!verify_consistency(4, 10, &r, &r, &[]));
    assert!(!verify_consistency(1, u64::MAX, &r, &r, &[r; 70]));
    assert!(!verify_consistency(
        u64::MAX - 1,
        u64::MAX,
        &r,
        &r,
        &[r; 70]
    ));
}
