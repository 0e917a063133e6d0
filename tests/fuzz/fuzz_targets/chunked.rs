//! Chunked decoder: no panic; feeding in pieces (cut points taken from the input) gives the
//! same data, consumed count, completion and error as one feed.
#![no_main]

use goloadbalancer::http::{ChunkError, ChunkLimits, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

type Outcome = Result<(Vec<u8>, usize, bool), ChunkError>;

fn run(input: &[u8], cuts: &[usize], limits: ChunkLimits) -> Outcome {
    let mut d = ChunkedDecoder::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut consumed = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        if c < pos {
            continue;
        }
        let p = d.feed(&input[pos..c], &mut |s| out.extend_from_slice(s))?;
        consumed += p.consumed;
        if p.done {
            return Ok((out, consumed, true));
        }
        pos = c;
    }
    Ok((out, consumed, false))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let limits = if sel & 1 == 0 {
        ChunkLimits::default()
    } else {
        ChunkLimits {
            max_size_line: usize::from(sel >> 4) + 1,
            max_trailer_bytes: usize::from(sel >> 2),
            max_body: u64::from(sel) * 3,
        }
    };
    let whole = run(input, &[], limits);
    let step = usize::from(sel >> 1).max(1);
    let cuts: Vec<usize> = (1..input.len()).step_by(step).collect();
    let split = run(input, &cuts, limits);
    assert_eq!(split, whole);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(input, &bytewise, limits), whole);
    if let Ok((data, consumed, _)) = &whole {
        assert!(consumed <= &input.len());
        assert!(data.len() <= *consumed);
    }
});
