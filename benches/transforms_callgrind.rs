//! A fixed workload for instruction counts, beside the criterion bench `transforms`: the
//! same readings and the same remap and filter stages, `BATCHES` batches of `BATCH`
//! readings, each step in its own function so callgrind can count it alone (counts do not
//! depend on the machine's noise, unlike timings):
//!
//! ```text
//! cargo bench --bench transforms_callgrind --no-run
//! valgrind --tool=callgrind --toggle-collect='transforms_callgrind::remap_step' \
//!     target/release/deps/transforms_callgrind-<hash>
//! ```
//!
//! and divide the collected instructions by the readings it prints. The steps:
//! `remap_step` (`temperature_f: temperature * 9 / 5 + 32`, a rename, a drop),
//! `filter_step` (`temperature is number and temperature < 200`), and `chain_step`
//! (body → decode → events → remap → filter, as `transforms`' `chain`).

use std::hint::black_box;

use weir::codecs::DecodingConfig;
use weir::event::{Event, EventBatch};

#[path = "support/stages.rs"]
mod stages;
use stages::{Stage, array_body, batch, to_events};

const BATCHES: usize = 200;
const BATCH: usize = 100;

#[inline(never)]
fn remap_step(stage: &mut Stage, batches: Vec<EventBatch>) -> Vec<Vec<Event>> {
    batches.into_iter().map(|b| stage.run(b)).collect()
}

#[inline(never)]
fn filter_step(stage: &mut Stage, batches: Vec<EventBatch>) -> Vec<Vec<Event>> {
    batches.into_iter().map(|b| stage.run(b)).collect()
}

#[inline(never)]
fn chain_step(remap: &mut Stage, filter: &mut Stage, bodies: &[Vec<u8>]) -> usize {
    let decoder = DecodingConfig::default().decoder();
    let mut kept = 0;
    for body in bodies {
        let readings = decoder.decode(body).expect("the bench body decodes");
        let shaped = remap.run(to_events(readings));
        kept += filter.run(shaped.into()).len();
    }
    kept
}

fn main() {
    let mut remap = Stage::remap();
    let mut filter = Stage::filter();
    let inputs = || (0..BATCHES).map(|_| batch(BATCH)).collect::<Vec<_>>();
    let remapped = remap_step(&mut remap, inputs());
    assert!(remapped.iter().all(|events| events.len() == BATCH));
    let filtered = filter_step(&mut filter, inputs());
    assert!(filtered.iter().all(|events| events.len() == BATCH));
    let bodies = vec![array_body(BATCH); BATCHES];
    let kept = chain_step(&mut remap, &mut filter, black_box(&bodies));
    assert_eq!(kept, BATCHES * BATCH);
    // Dropping the outputs is outside the counted steps.
    drop((remapped, filtered));
    println!("{} readings per step", BATCHES * BATCH);
}
