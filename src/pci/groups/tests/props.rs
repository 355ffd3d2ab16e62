//! Property tests over random topologies: random trees of root ports, switches, PCIe-to-PCI
//! and conventional bridges, multi-function devices, SR-IOV PFs with VFs, quirky devices and
//! random ACS bits.

use proptest::prelude::*;

use super::*;

const N: usize = 128;

/// xorshift64*: the generator only needs to be deterministic per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A function of the generated tree, with its children (VFs are siblings of their PF, below
/// the same port, as enumeration records them).
#[derive(Clone)]
struct Node {
    f: Function,
    pf: Option<Bdf>,
    children: Vec<Node>,
}

struct Gen {
    rng: Rng,
    next_bus: u16,
    count: usize,
}

/// Device IDs with and without quirks.
const ENDPOINT_IDS: [(u16, u16); 6] = [
    (0x1234, 0x11e8),
    (0x8086, 0x10c9),
    (0x1b4b, 0x9123),
    (0x1180, 0xe832),
    (0x9005, 0x0285),
    (0x1b36, 0x0010),
];
const BRIDGE_IDS: [(u16, u16); 2] = [(0x1b36, 0x0001), (0x1b21, 0x1080)];
const BUDGET: usize = N - 12;

impl Gen {
    fn acs(&mut self) -> Option<Acs> {
        match self.rng.below(5) {
            0 => None,
            1 | 2 => Some(ACS_ON),
            3 => Some(ACS_OFF),
            _ => Some(Acs {
                capability: self.rng.next() as u16 & 0x7f,
                control: self.rng.next() as u16 & 0x7f,
            }),
        }
    }

    fn bus(&mut self) -> Option<u8> {
        (self.next_bus <= 0xff && self.count < BUDGET).then(|| {
            self.next_bus += 1;
            (self.next_bus - 1) as u8
        })
    }

    fn node(&mut self, mut f: Function, children: Vec<Node>) -> Node {
        self.count += 1;
        f.parent = None;
        Node { f, pf: None, children }
    }

    fn ids(&mut self, list: &[(u16, u16)]) -> (u16, u16) {
        list[self.rng.below(list.len())]
    }

    /// Functions 0..n of one device, with random ACS and IDs.
    fn device(&mut self, kind: FunctionKind, bus: u8, dev: u8, out: &mut Vec<Node>) {
        let n = 1 + self.rng.below(3);
        let (vendor, device) = self.ids(&ENDPOINT_IDS);
        for func in 0..n as u8 {
            let mut f = with_id(function(kind, bus, dev, func, None), vendor, device);
            f.multi_function = n > 1;
            f.acs = if kind.is_pcie() { self.acs() } else { None };
            let node = self.node(f, Vec::new());
            out.push(node);
        }
    }

    /// What sits below a root or downstream port whose secondary bus is `bus`.
    fn link(&mut self, bus: u8, depth: u32) -> Vec<Node> {
        let mut out = Vec::new();
        if self.count >= BUDGET {
            return out;
        }
        match self.rng.below(if depth > 2 { 2 } else { 5 }) {
            0 => {
                self.device(FunctionKind::PcieEndpoint, bus, 0, &mut out);
                // VFs of function 0, on the same bus (devfn 0x80 + 2k, as igb), or none.
                let pf = out[0].f.bdf();
                for k in 0..self.rng.below(4) as u8 {
                    let mut v =
                        with_id(endpoint(bus, 0x10, 2 * k, None), out[0].f.id.vendor, 0x10ca);
                    v.acs = if self.rng.below(4) == 0 { self.acs() } else { None };
                    let mut node = self.node(v, Vec::new());
                    node.pf = Some(pf);
                    out.push(node);
                }
            }
            1 => {}
            2 | 3 => {
                let Some(internal) = self.bus() else { return out };
                let mut ports = Vec::new();
                for dev in 0..1 + self.rng.below(3) as u8 {
                    let Some(sec) = self.bus() else { break };
                    let acs = self.acs();
                    let below = self.link(sec, depth + 1);
                    let dsp =
                        bridge(FunctionKind::SwitchDownstream, internal, dev, 0, sec, None, acs);
                    ports.push(self.node(dsp, below));
                }
                if self.rng.below(6) == 0 {
                    self.device(FunctionKind::PcieEndpoint, internal, 7, &mut ports);
                }
                let usp = bridge(FunctionKind::SwitchUpstream, bus, 0, 0, internal, None, None);
                out.push(self.node(usp, ports));
            }
            _ => {
                let Some(sec) = self.bus() else { return out };
                let below = self.conventional_bus(sec, depth + 1);
                out.push(self.node(pcie_to_pci(bus, 0, 0, sec, None), below));
            }
        }
        out
    }

    /// Devices on a conventional bus.
    fn conventional_bus(&mut self, bus: u8, depth: u32) -> Vec<Node> {
        let mut out = Vec::new();
        let mut devs: Vec<u8> = (0..32).collect();
        self.rng.shuffle(&mut devs);
        for &dev in &devs[..1 + self.rng.below(3)] {
            if self.count >= BUDGET {
                break;
            }
            if depth < 4
                && self.rng.below(4) == 0
                && let Some(sec) = self.bus()
            {
                let below = self.conventional_bus(sec, depth + 1);
                let (vendor, device) = self.ids(&BRIDGE_IDS);
                let b = with_id(conventional_bridge(bus, dev, 0, sec, None), vendor, device);
                out.push(self.node(b, below));
                continue;
            }
            self.device(FunctionKind::ConventionalEndpoint, bus, dev, &mut out);
        }
        out
    }

    fn root_bus(&mut self) -> Vec<Node> {
        let mut out = Vec::new();
        let mut devs: Vec<u8> = (0..32).collect();
        self.rng.shuffle(&mut devs);
        for &dev in &devs[..1 + self.rng.below(6)] {
            match self.rng.below(5) {
                0 | 1 => {
                    for func in 0..1 + self.rng.below(2) as u8 {
                        let Some(sec) = self.bus() else { break };
                        let acs = self.acs();
                        let below = self.link(sec, 1);
                        let (vendor, device) = if self.rng.below(8) == 0 {
                            (0x17cb, 0x0400)
                        } else {
                            (0x1234, 0x0001)
                        };
                        out.push(self.node(
                            with_id(root_port(0, dev, func, sec, acs), vendor, device),
                            below,
                        ));
                    }
                }
                2 => self.device(FunctionKind::RootComplexEndpoint, 0, dev, &mut out),
                3 => self.device(FunctionKind::ConventionalEndpoint, 0, dev, &mut out),
                _ => {
                    if let Some(sec) = self.bus() {
                        let below = self.conventional_bus(sec, 1);
                        let (vendor, device) = self.ids(&BRIDGE_IDS);
                        out.push(self.node(
                            with_id(conventional_bridge(0, dev, 0, sec, None), vendor, device),
                            below,
                        ));
                    }
                }
            }
        }
        out
    }
}

fn generate(seed: u64) -> Vec<Node> {
    Gen { rng: Rng::new(seed), next_bus: 1, count: 0 }.root_bus()
}

/// The snapshot of `tree`, depth-first; with `permute`, siblings in a random order.
fn snapshot(tree: &[Node], permute: Option<u64>) -> Topology<N> {
    fn emit(
        nodes: &[Node],
        parent: Option<FunctionIndex>,
        t: &mut Topology<N>,
        rng: &mut Option<Rng>,
    ) {
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        if let Some(r) = rng {
            r.shuffle(&mut order);
        }
        for k in order {
            let mut f = nodes[k].f;
            f.parent = parent;
            let i = t.push(f).unwrap();
            emit(&nodes[k].children, Some(i), t, rng);
        }
    }
    fn link_vfs(nodes: &[Node], t: &mut Topology<N>) {
        for n in nodes {
            if let Some(pf) = n.pf {
                let (vf, pf) = (t.find(n.f.bdf()).unwrap(), t.find(pf).unwrap());
                t.functions_mut()[usize::from(vf.0)].physical_function = Some(pf);
            }
            link_vfs(&n.children, t);
        }
    }
    let mut t = Topology::new();
    emit(tree, None, &mut t, &mut permute.map(Rng::new));
    link_vfs(tree, &mut t);
    t
}

fn index(i: usize) -> FunctionIndex {
    FunctionIndex(i as u16)
}

proptest! {
    /// (i) The groups, their IDs, members and causes do not depend on sibling order, nor do the
    /// visible RIDs.
    #[test]
    fn groups_do_not_depend_on_sibling_order(seed in any::<u64>(), perm in any::<u64>()) {
        let tree = generate(seed);
        let (a, b) = (snapshot(&tree, None), snapshot(&tree, Some(perm)));
        prop_assert_eq!(a.len(), b.len());
        let (ga, gb) = (Groups::compute(&a), Groups::compute(&b));
        prop_assert_eq!(layout(&ga), layout(&gb));
        for i in 0..a.len() {
            let j = b.find(a.functions()[i].bdf()).unwrap();
            prop_assert_eq!(visible_rid(&a, index(i)), visible_rid(&b, j));
            let (ra, rb): (Vec<_>, Vec<_>) = (
                ga.aliases(&a, ga.group_of(index(i)).unwrap()).map(|x| x.bdf()).collect(),
                gb.aliases(&b, gb.group_of(j).unwrap()).map(|x| x.bdf()).collect(),
            );
            let (mut ra, mut rb) = (ra, rb);
            ra.sort();
            rb.sort();
            prop_assert_eq!(ra, rb);
        }
    }

    /// (ii) No RID is split across groups: functions with a common alias share a group, and the
    /// alias lists of different groups are disjoint. Every bridge that rewrites a function's
    /// RID is in its group.
    #[test]
    fn no_alias_is_split_across_groups(seed in any::<u64>()) {
        let t = snapshot(&generate(seed), None);
        let g = Groups::compute(&t);
        let all: Vec<Vec<Alias>> = (0..t.len()).map(|i| aliases(&t, index(i)).collect()).collect();
        for i in 0..t.len() {
            for a in &all[i] {
                if let Some(b) = a.reason.bridge() {
                    prop_assert!(g.same_group(index(i), b));
                }
            }
            for j in 0..i {
                if all[i].iter().any(|a| all[j].iter().any(|b| a.same_rid(b))) {
                    prop_assert!(g.same_group(index(i), index(j)), "{:?} {:?}", all[i], all[j]);
                }
            }
        }
        let mut seen: Vec<(Bdf, GroupId)> = Vec::new();
        for gr in g.iter() {
            for a in gr.aliases(&t) {
                prop_assert!(!seen.iter().any(|&(b, _)| b == a.bdf()), "{:?} in two groups", a);
                seen.push((a.bdf(), gr.id()));
            }
        }
    }

    /// (iii) Random attach and detach sequences never leave a group in two domains; the state
    /// after the successful attaches of an attach-only sequence does not depend on their order.
    #[test]
    fn attaches_never_split_a_group(
        seed in any::<u64>(),
        ops in proptest::collection::vec((any::<u16>(), 0u32..3, 0u8..4), 1..64),
        perm in any::<u64>(),
    ) {
        let t = snapshot(&generate(seed), None);
        let g = Groups::compute(&t);
        let pick = |x: u16| index(usize::from(x) % t.len());

        let mut mixed = GroupAttachments::<N>::new();
        for &(x, d, op) in &ops {
            if op == 0 {
                mixed.detach(pick(x));
            } else {
                let _ = mixed.attach(&g, pick(x), DomainId(d));
            }
            prop_assert_eq!(mixed.check(&g), Ok(()));
        }

        let mut first = GroupAttachments::<N>::new();
        let mut done = Vec::new();
        for &(x, d, _) in &ops {
            if first.attach(&g, pick(x), DomainId(d)).is_ok() {
                done.push((pick(x), DomainId(d)));
            } else {
                // A refusal names a member really attached elsewhere.
                let Err(Error::GroupSplit { member, member_domain, .. }) = first.attach(&g, pick(x), DomainId(d))
                else { unreachable!() };
                let m = t.find(member).unwrap();
                prop_assert!(g.same_group(m, pick(x)));
                prop_assert_eq!(first.domain_of(m), Some(DomainId(member_domain)));
            }
        }
        Rng::new(perm).shuffle(&mut done);
        let mut second = GroupAttachments::<N>::new();
        for &(i, d) in &done {
            prop_assert_eq!(second.attach(&g, i, d), Ok(()));
        }
        for i in 0..t.len() {
            prop_assert_eq!(first.domain_of(index(i)), second.domain_of(index(i)));
        }
    }
}
