//! A small pool of worker threads that applies one function to jobs and hands the results
//! back in submission order. Hashing and (de)compressing chunks is independent per chunk;
//! this spreads it over the cores while the calling thread does the I/O.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Work<J, R> = Arc<dyn Fn(J) -> R + Send + Sync>;

pub(crate) struct OrderedPool<J: Send + 'static, R: Send + 'static> {
    work: Work<J, R>,
    jobs: Option<Sender<(u64, J)>>,
    results: Option<Receiver<(u64, R)>>,
    workers: Vec<JoinHandle<()>>,
    /// Results of jobs that finished ahead of an earlier one.
    parked: BTreeMap<u64, R>,
    /// With no worker threads, results computed inline at submission.
    inline: std::collections::VecDeque<R>,
    submitted: u64,
    delivered: u64,
}

impl<J: Send + 'static, R: Send + 'static> OrderedPool<J, R> {
    /// `threads == 0` runs every job on the calling thread when it is submitted.
    pub fn new(threads: usize, work: impl Fn(J) -> R + Send + Sync + 'static) -> Self {
        let work: Work<J, R> = Arc::new(work);
        let mut pool = OrderedPool {
            work: work.clone(),
            jobs: None,
            results: None,
            workers: Vec::new(),
            parked: BTreeMap::new(),
            inline: Default::default(),
            submitted: 0,
            delivered: 0,
        };
        if threads == 0 {
            return pool;
        }
        let (job_sender, job_receiver) = channel::<(u64, J)>();
        let (result_sender, result_receiver) = channel::<(u64, R)>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        for _ in 0..threads {
            let job_receiver = job_receiver.clone();
            let result_sender = result_sender.clone();
            let work = work.clone();
            pool.workers.push(std::thread::spawn(move || loop {
                // The lock is held only while taking one job off the queue.
                let next = job_receiver.lock().map(|receiver| receiver.recv());
                let Ok(Ok((sequence, job))) = next else {
                    return;
                };
                if result_sender.send((sequence, work(job))).is_err() {
                    return;
                }
            }));
        }
        pool.jobs = Some(job_sender);
        pool.results = Some(result_receiver);
        pool
    }

    pub fn submit(&mut self, job: J) {
        match &self.jobs {
            Some(jobs) => {
                // A send fails only when every worker is gone; `next` reports that.
                let _ = jobs.send((self.submitted, job));
            }
            None => self.inline.push_back((self.work)(job)),
        }
        self.submitted += 1;
    }

    /// Jobs submitted whose results have not been taken yet.
    pub fn in_flight(&self) -> usize {
        (self.submitted - self.delivered) as usize
    }

    /// The result of the oldest job not yet taken, waiting for it if needed. `None` when no
    /// job is in flight; `Some(Err(()))` when the workers died before producing it.
    pub fn next(&mut self) -> Option<Result<R, ()>> {
        if self.delivered == self.submitted {
            return None;
        }
        let Some(results) = &self.results else {
            self.delivered += 1;
            return self.inline.pop_front().map(Ok);
        };
        let wanted = self.delivered;
        while !self.parked.contains_key(&wanted) {
            match results.recv() {
                Ok((sequence, result)) => {
                    self.parked.insert(sequence, result);
                }
                Err(_) => return Some(Err(())),
            }
        }
        self.delivered += 1;
        self.parked.remove(&wanted).map(Ok)
    }
}

impl<J: Send + 'static, R: Send + 'static> Drop for OrderedPool<J, R> {
    fn drop(&mut self) {
        // Closing the job queue ends each worker after its current job; results still
        // queued are dropped with the receiver.
        self.jobs.take();
        self.results.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_submission_order() {
        for threads in [0, 1, 3] {
            let mut pool = OrderedPool::new(threads, |n: u64| {
                // Later jobs finish first, to exercise reordering.
                std::thread::sleep(std::time::Duration::from_micros(200 - n * 10));
                n * 2
            });
            for n in 0..20 {
                pool.submit(n);
            }
            let results: Vec<u64> =
                std::iter::from_fn(|| pool.next().map(Result::unwrap)).collect();
            assert_eq!(results, (0..20).map(|n| n * 2).collect::<Vec<_>>());
            assert_eq!(pool.in_flight(), 0);
        }
    }
}
