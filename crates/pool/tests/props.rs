//! Property: `map` over any input and chunk size equals the sequential map.

use std::sync::OnceLock;

use mproc_pool::Pool;
use proptest::prelude::*;

use crate::*;

fn shared_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| pool(2))
}

fn mix(x: (i32, String)) -> (i64, usize) {
    (i64::from(x.0) * 3 - 1, x.1.chars().count())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn prop_map_equals_sequential_map(
        items in prop::collection::vec((any::<i32>(), ".{0,12}"), 0..300),
        chunksize in 1usize..50,
    ) {
        let pool = shared_pool();
        let expected: Vec<(i64, usize)> = items.iter().cloned().map(mix).collect();
        prop_assert_eq!(pool.map(mix, items.clone()).unwrap(), expected.clone());
        prop_assert_eq!(pool.map_chunked(mix, items.clone(), chunksize).unwrap(), expected.clone());
        let lazily: Vec<(i64, usize)> = pool.imap_chunked(mix, items, chunksize).map(Result::unwrap).collect();
        prop_assert_eq!(lazily, expected);
    }
}
