// Tests of the lsm engine alone, included in `tests_lsm::lsm_only` (embedded.rs), with the
// helpers of `embedded_tests.rs`.

#[tokio::test]
async fn numbering_stays_exact_past_the_writer_s_head_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let streams = super::super::lsm::HEAD_CACHE + 2_000;
    // Two rounds over more streams than the cache holds (it starts again empty on the way),
    // one more append to a stream now cached and to one that is not, and a reopen.
    for round in 1..=2u64 {
        for chunk in (0..streams).collect::<Vec<_>>().chunks(4_096) {
            let seqs = s.append_user(chunk.iter().map(|i| ev(&format!("s{i}"), now_ms(), "x")).collect()).await.unwrap();
            assert!(seqs.iter().all(|&q| q == round), "round {round}: {seqs:?}");
        }
    }
    assert_eq!(s.append_user(vec![ev("s7", now_ms(), "y")]).await.unwrap(), vec![3]);
    assert_eq!(s.append_user(vec![ev(&format!("s{}", streams - 1), now_ms(), "y")]).await.unwrap(), vec![3]);
    assert_eq!(seqs(&s.read_user("s7", 0, 10).await.unwrap()), vec![1, 2, 3]);
    s.close().await.unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.append_user(vec![ev("s7", now_ms(), "z")]).await.unwrap(), vec![4]);
}

#[tokio::test]
async fn small_records_are_flushed_in_small_memtables() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Never)).unwrap());
    // 256,000 cursor writes (each a new version of one of 1,000 keys, some 50 bytes with
    // fjall's own), far more than one 8 MiB memtable: the cursors' keyspace seals its
    // memtable at 1 MiB, so the write buffer stays within a few of those (fjall stalls at
    // four sealed), under what one memtable of the events' size would hold by itself.
    let bound = 6 * super::super::lsm::SMALL_MEMTABLE_BYTES;
    assert!(bound < super::super::lsm::MEMTABLE_BYTES);
    let mut most = 0;
    for round in 1..=256u64 {
        let writes = (0..1000).map(|i| {
            let s = s.clone();
            async move { s.set_cursor(&format!("user-{i}"), "phone", round, 10).await }
        });
        for r in futures_util::future::join_all(writes).await {
            assert_eq!(r.unwrap(), round);
        }
        most = most.max(s.memory().map_or(0, |m| m.1));
        assert!(most <= bound, "round {round}: {most} bytes of memtables, bound {bound}");
    }
    assert!(most >= super::super::lsm::SMALL_MEMTABLE_BYTES / 2, "the memtables did fill: {most}");
    assert_eq!(s.cursor("user-7", "phone").await.unwrap(), Some(256));
}
