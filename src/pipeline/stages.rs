//! [`Pipeline::protect_stream`]: the stages a photo goes through, each on its own threads, so that
//! reading and writing photos overlap the engine's work across photos, not only within one batch.
//!
//! - Decoder threads take the jobs from the source one at a time, in order, and read them; they stay
//!   at most a window of photos ahead of the engine, so memory stays bounded.
//! - The calling thread, which alone touches the models, takes the decoded photos in job order,
//!   finds their faces and attacks them in groups of up to [`Pipeline::photo_batch`] photos.
//! - Writer threads encode, write and check each photo as soon as it is ready: a faceless photo
//!   while others are attacked, one attacked group while the next one is.
//!
//! So while the engine attacks one group, the next photos are being read and the last ones written.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::Instant,
};

use tch::Device;

use super::{decode, finish, FileJob, Outcome, Pipeline, PipelineError, Prepared};
use crate::{imageio::Photo, protect::Rng};

/// When the engine attacks the photos it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Groups are consecutive photos with faces and the same parameters, in job order, up to the
    /// batch size: the same groups (and so, with a seed, the same pixels) whatever the timing.
    Deterministic,
    /// As above, but a group is attacked as soon as the next photo has not been read yet: for
    /// photos that arrive over time (the daemon), so none waits for one that has not come.
    AsReady,
}

/// A photo as a decoder thread hands it over.
struct Decoded<T> {
    tag: T,
    job: FileJob,
    photo: Result<Photo, PipelineError>,
    seconds: f64,
}

/// Decoded photos waiting for the engine, handed over in job order.
struct Reorder<T> {
    state: Mutex<ReorderState<T>>,
    changed: Condvar,
    /// How far (in jobs) a decoder may read ahead of the engine.
    window: u64,
    decoders: usize,
}

struct ReorderState<T> {
    ready: BTreeMap<u64, Decoded<T>>,
    /// The job the engine takes next.
    want: u64,
    /// Decoders that found the source empty.
    ended: usize,
}

enum Next<T> {
    Photo(Box<Decoded<T>>),
    /// The next photo is still being read (only when asked not to wait).
    NotYet,
    /// Every job has been handed over.
    End,
}

impl<T> Reorder<T> {
    fn new(window: u64, decoders: usize) -> Reorder<T> {
        Reorder {
            state: Mutex::new(ReorderState { ready: BTreeMap::new(), want: 0, ended: 0 }),
            changed: Condvar::new(),
            window,
            decoders,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReorderState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until job `seq` is within the window ahead of the engine.
    fn wait_for_room(&self, seq: u64) {
        let mut state = self.lock();
        while seq >= state.want + self.window {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn put(&self, seq: u64, decoded: Decoded<T>) {
        self.lock().ready.insert(seq, decoded);
        self.changed.notify_all();
    }

    fn end_one(&self) {
        self.lock().ended += 1;
        self.changed.notify_all();
    }

    /// The next photo in job order; with `wait` false, [`Next::NotYet`] when it is not read yet.
    fn take(&self, wait: bool) -> Next<T> {
        let mut state = self.lock();
        loop {
            let want = state.want;
            if let Some(decoded) = state.ready.remove(&want) {
                state.want += 1;
                self.changed.notify_all();
                return Next::Photo(Box::new(decoded));
            }
            // Every decoder has put all it took before ending, so nothing more is coming.
            if state.ended == self.decoders {
                return Next::End;
            }
            if !wait {
                return Next::NotYet;
            }
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The source of jobs, shared by the decoders: each job gets the next sequence number.
struct Source<F> {
    next: F,
    seq: u64,
}

/// The stream's switches: `stop` is the caller's, `on_cpu` tells the writers where to measure quality
/// once the engine has moved to the CPU.
#[derive(Clone, Copy)]
struct Flags<'a> {
    stop: &'a AtomicBool,
    on_cpu: &'a AtomicBool,
}

/// Photos with faces found, waiting to be attacked together (all with the same parameters).
struct Group<T> {
    tags: Vec<(T, FileJob)>,
    members: Vec<Prepared>,
}

impl Pipeline {
    /// Protects the jobs `next` hands over (it may block; `None` ends the stream) and hands each
    /// result to `done`, from whichever thread finished it and in whatever order they finish, with
    /// the tag that came with its job. Returns once every job is done.
    ///
    /// Photos are read ahead and written behind the engine's work (see the module's doc). When a
    /// group's attack fails, its photos are tried one by one, so an error is pinned on the photo
    /// that caused it; when the GPU runs out of memory on a single photo, the engine moves to the
    /// CPU for good and tries that photo again there.
    ///
    /// Once `stop` is set, no further photo is detected or attacked: each one read but not yet
    /// attacked ends as [`PipelineError::Stopped`] (those already attacked are still written).
    pub fn protect_stream<T, N, D>(
        &mut self,
        next: N,
        done: D,
        rng: &mut Rng,
        grouping: Grouping,
        stop: &AtomicBool,
    ) where
        T: Send,
        N: FnMut() -> Option<(T, FileJob)> + Send,
        D: Fn(T, Result<Outcome, PipelineError>) + Sync,
    {
        let batch = self.photo_batch();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let decoders = cores.min(batch.max(2));
        let writers = cores.min(batch.max(2));
        let config = self.config.clone();
        let device = self.ensemble.device;
        let on_cpu = AtomicBool::new(!device.is_cuda());
        let source = Mutex::new(Source { next, seq: 0 });
        let reorder = Reorder::new(2 * batch as u64, decoders);
        let (write_tx, write_rx) = mpsc::sync_channel::<(T, FileJob, Prepared)>(batch);
        let write_rx = Mutex::new(write_rx);
        std::thread::scope(|scope| {
            for _ in 0..decoders {
                let (source, reorder, config) = (&source, &reorder, &config);
                scope.spawn(move || {
                    loop {
                        let taken = {
                            let mut source = source.lock().unwrap_or_else(PoisonError::into_inner);
                            let seq = source.seq;
                            (source.next)().map(|(tag, job)| {
                                source.seq += 1;
                                (seq, tag, job)
                            })
                        };
                        let Some((seq, tag, job)) = taken else { break };
                        reorder.wait_for_room(seq);
                        let started = Instant::now();
                        let photo = decode(config, &job);
                        let seconds = started.elapsed().as_secs_f64();
                        reorder.put(seq, Decoded { tag, job, photo, seconds });
                    }
                    reorder.end_one();
                });
            }
            for _ in 0..writers {
                let (rx, config, on_cpu, done) = (&write_rx, &config, &on_cpu, &done);
                scope.spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((tag, job, prepared)) = next else { break };
                    let device = if on_cpu.load(Ordering::SeqCst) { Device::Cpu } else { device };
                    done(tag, finish(config, device, prepared, &job));
                });
            }
            // The engine, on this thread. The writers outlive every send, so sends cannot fail.
            let send = |tag: T, job: FileJob, prepared: Prepared| {
                let _ = write_tx.send((tag, job, prepared));
            };
            let flags = Flags { stop, on_cpu: &on_cpu };
            let mut group = Group { tags: Vec::new(), members: Vec::new() };
            loop {
                let wait = grouping == Grouping::Deterministic || group.members.is_empty();
                let Decoded { tag, job, photo, seconds } = match reorder.take(wait) {
                    Next::Photo(decoded) => *decoded,
                    Next::NotYet => {
                        self.attack(&mut group, rng, flags, &send, &done);
                        continue;
                    }
                    Next::End => break,
                };
                if stop.load(Ordering::SeqCst) {
                    self.stopped(&mut group, &done);
                    done(tag, Err(PipelineError::Stopped { path: job.source }));
                    continue;
                }
                match photo.and_then(|photo| self.detect(photo, seconds, &job)) {
                    Err(e) => done(tag, Err(e)),
                    Ok(p) if p.found.targets.is_empty() => send(tag, job, p),
                    Ok(p) => {
                        if group.members.first().is_some_and(|first| first.params != p.params) {
                            self.attack(&mut group, rng, flags, &send, &done);
                        }
                        group.tags.push((tag, job));
                        group.members.push(p);
                        if group.members.len() >= self.photo_batch() {
                            self.attack(&mut group, rng, flags, &send, &done);
                        }
                    }
                }
            }
            self.attack(&mut group, rng, flags, &send, &done);
            drop(write_tx);
        });
    }

    /// Ends every photo of a group (emptying it) as not protected because the stream stops.
    fn stopped<T>(&self, group: &mut Group<T>, done: &impl Fn(T, Result<Outcome, PipelineError>)) {
        group.members.clear();
        for (tag, job) in group.tags.drain(..) {
            done(tag, Err(PipelineError::Stopped { path: job.source }));
        }
    }

    /// Attacks a group (emptying it) and sends each protected photo to the writers; a failure goes to
    /// `done` for the photo it belongs to.
    fn attack<T>(
        &mut self,
        group: &mut Group<T>,
        rng: &mut Rng,
        flags: Flags<'_>,
        send: &impl Fn(T, FileJob, Prepared),
        done: &impl Fn(T, Result<Outcome, PipelineError>),
    ) {
        if flags.stop.load(Ordering::SeqCst) {
            self.stopped(group, done);
            return;
        }
        let tags = std::mem::take(&mut group.tags);
        let mut members = std::mem::take(&mut group.members);
        let Some(params) = members.first().map(|p| p.params.clone()) else { return };
        let started = Instant::now();
        let jobs: Vec<&FileJob> = tags.iter().map(|(_, job)| job).collect();
        match self.attack_group(&mut members, &jobs, &params, rng) {
            Ok(()) => {
                let share = started.elapsed().as_secs_f64() / members.len() as f64;
                for ((tag, job), mut p) in tags.into_iter().zip(members) {
                    p.seconds += share;
                    send(tag, job, p);
                }
            }
            Err(_) if members.len() > 1 => {
                for ((tag, job), p) in tags.into_iter().zip(members) {
                    let mut one = Group { tags: vec![(tag, job)], members: vec![p] };
                    self.attack(&mut one, rng, flags, send, done);
                }
            }
            Err(e) => {
                let (Some((tag, job)), Some(mut p)) = (tags.into_iter().next(), members.pop()) else {
                    return;
                };
                if e.is_out_of_memory() && self.ensemble.device.is_cuda() {
                    tracing::warn!("out of GPU memory on {}: continuing on the CPU", job.source.display());
                    match Pipeline::load(&self.config, Device::Cpu) {
                        Ok(cpu) => {
                            *self = cpu;
                            flags.on_cpu.store(true, Ordering::SeqCst);
                            p.params = self.params(job.options.preset);
                            let mut one = Group { tags: vec![(tag, job)], members: vec![p] };
                            self.attack(&mut one, rng, flags, send, done);
                            return;
                        }
                        Err(load) => tracing::error!("cannot move the engine to the CPU: {load}"),
                    }
                }
                done(tag, Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(n: usize) -> Decoded<usize> {
        Decoded {
            tag: n,
            job: FileJob {
                source: format!("/in/{n}.jpg").into(),
                out_dir: "/out".into(),
                options: Default::default(),
            },
            photo: Err(PipelineError::Name { path: format!("/in/{n}.jpg").into() }),
            seconds: 0.0,
        }
    }

    fn tag(next: Next<usize>) -> Option<usize> {
        match next {
            Next::Photo(d) => Some(d.tag),
            Next::NotYet | Next::End => None,
        }
    }

    #[test]
    fn photos_come_out_in_job_order_and_the_end_only_after_every_decoder() {
        let r = Reorder::new(4, 2);
        r.put(1, decoded(1));
        assert!(matches!(r.take(false), Next::NotYet), "job 0 is not read yet");
        r.put(0, decoded(0));
        assert_eq!(tag(r.take(false)), Some(0));
        assert_eq!(tag(r.take(false)), Some(1));
        r.end_one();
        assert!(matches!(r.take(false), Next::NotYet), "one decoder may still be reading");
        r.end_one();
        assert!(matches!(r.take(true), Next::End));
    }

    #[test]
    fn a_decoder_waits_while_it_is_a_window_ahead() {
        let r = Reorder::new(2, 1);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                r.wait_for_room(2);
                tx.send(()).unwrap();
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(rx.try_recv().is_err(), "job 2 is two ahead of job 0");
            r.put(0, decoded(0));
            assert_eq!(tag(r.take(true)), Some(0));
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        });
    }
}
