//! Property: a random tree of tasks with yields, sleeps and channel sends always completes,
//! each task exactly once, with the results of a sequential run.

use std::rc::Rc;
use std::time::Duration;

use mproc_coroutine::{Executor, LocalSender, channel, sleep, spawn, yield_now};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Yield(u8),
    Sleep(u8),
    Send,
}

#[derive(Debug, Clone)]
struct Node {
    value: u32,
    step: Step,
    children: Vec<Node>,
}

fn node() -> impl Strategy<Value = Node> {
    let step = prop_oneof![(0u8..4).prop_map(Step::Yield), (0u8..3).prop_map(Step::Sleep), Just(Step::Send)];
    let leaf =
        (any::<u16>(), step.clone()).prop_map(|(v, step)| Node { value: v.into(), step, children: vec![] });
    leaf.prop_recursive(4, 64, 5, move |inner| {
        (any::<u16>(), step.clone(), prop::collection::vec(inner, 0..5))
            .prop_map(|(v, step, children)| Node { value: v.into(), step, children })
    })
}

/// The sequential model: the subtree's sum, and every node's value in visiting order.
fn model(node: &Node, seen: &mut Vec<u32>) -> u64 {
    seen.push(node.value);
    u64::from(node.value) + node.children.iter().map(|c| model(c, seen)).sum::<u64>()
}

/// Runs `node` as a task: its step, then its children as tasks, awaited; its subtree's sum.
fn run(node: Node, report: LocalSender<u32>) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64>>> {
    Box::pin(async move {
        match node.step {
            Step::Yield(n) => {
                for _ in 0..n {
                    yield_now().await;
                }
            }
            Step::Sleep(ms) => sleep(Duration::from_millis(ms.into())).await,
            Step::Send => {}
        }
        report.send(node.value).unwrap();
        let children: Vec<_> = node.children.into_iter().map(|c| spawn(run(c, report.clone()))).collect();
        let mut sum = u64::from(node.value);
        for child in children {
            sum += child.await.unwrap();
        }
        sum
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_task_trees_complete_like_the_sequential_model(tree in node()) {
        let mut expected_seen = Vec::new();
        let expected = model(&tree, &mut expected_seen);
        let ex = Executor::new().unwrap();
        let (tx, rx) = channel();
        let rx = Rc::new(rx);
        let sum = ex.block_on(async { crate::bounded(spawn(run(tree, tx))).await }).unwrap();
        prop_assert_eq!(sum, expected);
        let mut seen = Vec::new();
        while let Some(v) = rx.try_recv() {
            seen.push(v);
        }
        seen.sort_unstable();
        expected_seen.sort_unstable();
        prop_assert_eq!(seen, expected_seen, "each task ran exactly once");
    }
}
