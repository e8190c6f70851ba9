//! How a call ends once its walk is over: a live answer (unary, or a stream committed and
//! pumped), the upstream's rejection passed through, the chain's degradation, or the honest
//! error; the reply goes to the caller once, and the call's record is concluded.

use super::*;

/// A live answer: the attempt that served, and the call's record so far.
struct Answered {
    hop: usize,
    done: Box<attempt::Done>,
    attempts: u32,
    trail: Vec<crate::call::AttemptRecord>,
}

impl RequestState {
    /// The walk is over: answer the caller, conclude the call.
    pub(super) async fn finish(&mut self, f: Finish) {
        let Finish {
            ending,
            trail,
            attempts,
        } = f;
        let elapsed = report::since(self.started);
        let Some(report) = self.report.take() else {
            return;
        };
        for (_, f) in self.flights.drain() {
            f.task.abort();
        }
        if let Ending::Served { attempt, hop } = &ending {
            if self.hedges.contains(attempt) {
                hedge_event(&self.shared.models[self.model_of(*hop)].name, "won");
            }
        }
        let result: Result<Answered, Error> = match ending {
            Ending::Served { attempt, hop } | Ending::Refusal { attempt, hop } => {
                match self.answers.remove(&attempt) {
                    Some(done) => Ok(Answered {
                        hop,
                        done,
                        attempts,
                        trail,
                    }),
                    None => Err(Error::Internal(
                        "the answering attempt's result was lost".into(),
                    )),
                }
            }
            Ending::Rejected { attempt, hop } => {
                let response = self.answers.remove(&attempt).and_then(|d| d.response);
                Err(match response {
                    Some(r) => Error::Rejected {
                        model: self.shared.models[self.model_of(hop)].name.clone(),
                        status: r.status,
                        headers: r.headers,
                        body: r.body,
                        trail,
                    },
                    None => Error::Internal("the rejecting attempt's answer was lost".into()),
                })
            }
            Ending::Invalid(why) => Err(Error::InvalidCall(format!(
                "no model of chain {:?} can take this request ({why})",
                self.chain.name
            ))),
            Ending::Unavailable {
                retry_after,
                deadline_exceeded,
                deadline_spent,
                degrade,
            } => {
                let err = Error::Unavailable {
                    retry_after,
                    deadline_exceeded,
                    deadline_spent,
                    trail,
                };
                if degrade.is_empty() {
                    Err(err)
                } else {
                    let cache = self.cache_key();
                    let queue = degrade
                        .contains(&Degrade::Queue)
                        .then(|| self.shared.directory.queue())
                        .flatten()
                        .map(|q| (q, self.call.clone()));
                    let degraded = degrade::degraded(
                        err,
                        &degrade,
                        &self.chain.name,
                        cache.as_ref().map(|(c, k)| (c.as_ref(), k.as_str())),
                        self.shared.fleet.as_deref(),
                        queue,
                        elapsed,
                    )
                    .await;
                    match degraded {
                        Ok(reply) => {
                            self.answer_degraded(reply, report);
                            return;
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            Ending::Internal(why) => Err(if self.shutting_down {
                Error::ShuttingDown
            } else {
                Error::Internal(why)
            }),
        };
        match result {
            Ok(a) => self.answer_live(a, report, elapsed),
            Err(e) => {
                report.conclude(CallEnd::error(&e, elapsed, self.stream));
                self.send_reply(Err(e));
            }
        }
    }

    /// The response cache and this call's key, when the chain caches its live answers (never
    /// for a replayed job: it stands for a call answered long ago).
    pub(super) fn cache_key(&self) -> Option<(Arc<ResponseCache>, String)> {
        let cache = self.shared.cache.as_ref()?;
        let caches = self.call.job.is_none() && self.chain.policy.degrade.contains(&Degrade::Cache);
        caches.then(|| (Arc::clone(cache), self.call.cache_key()))
    }

    pub(super) fn send_reply(&mut self, result: Result<Reply, Error>) {
        // The caller may have stopped waiting; then nobody needs the answer.
        match self.reply.take() {
            Some(ReplyTo::Unary(tx)) => {
                let _ = tx.send(result);
            }
            Some(ReplyTo::Stream(tx)) => {
                let _ = tx.send(result.map(degrade::stream_of));
            }
            None => {}
        }
    }

    fn answer_degraded(&mut self, reply: Reply, report: Report) {
        // No model answered live: the chain failed this call, whatever stood in for it.
        let unavailable = Error::Unavailable {
            retry_after: None,
            deadline_exceeded: false,
            deadline_spent: false,
            trail: Vec::new(),
        };
        let mut end = CallEnd::error(&unavailable, reply.latency, self.stream);
        end.source = Some(reply.source.as_str());
        report.conclude(end);
        self.send_reply(Ok(reply));
    }

    fn answer_live(&mut self, a: Answered, report: Report, elapsed: Duration) {
        let Answered {
            hop,
            mut done,
            attempts,
            trail,
        } = a;
        let model = self.model_of(hop);
        let name = self.shared.models[model].name.clone();
        if let Some(head) = done.head.take() {
            let (stream_reply, pump) = stream::commit(
                head,
                stream::Commit {
                    model,
                    model_name: name,
                    hop,
                    attempts,
                    trail,
                    retry: done.retry,
                    deadline: self.walk.deadline(),
                    idle_timeout: self.chain.policy.idle_timeout,
                    time_to_first_token: elapsed,
                    cache: self.cache_key(),
                    report,
                },
            );
            let guard = self.guard.take();
            if let Some(ReplyTo::Stream(tx)) = self.reply.take() {
                if tx.send(Ok(stream_reply)).is_ok() {
                    tokio::spawn(async move {
                        pump.run().await;
                        drop(guard);
                    });
                }
                // Else the caller is gone: dropping the pump gives the permit and budget back
                // and concludes nothing more (the record of its attempts goes with it).
            }
            return;
        }
        let Some(response) = done.response.take() else {
            let e = Error::Internal("the answering attempt had no answer".into());
            report.conclude(CallEnd::error(&e, elapsed, self.stream));
            return self.send_reply(Err(e));
        };
        let usage = Observed::from_body(&response.body).usage;
        let reply = Reply {
            source: Source::Live,
            age: None,
            model: name,
            status: response.status,
            headers: response.headers,
            body: response.body,
            usage,
            attempts,
            trail,
            latency: elapsed,
        };
        if let Some((cache, key)) = self.cache_key() {
            if let (Some(fleet), Some(answer)) = (
                self.shared.fleet.clone(),
                crate::fleet::StoredAnswer::of(&Ok(reply.clone())),
            ) {
                // The fleet's copy, for when another instance's chain is down.
                let (key, ttl) = (key.clone(), cache.ttl());
                tokio::spawn(async move {
                    let _ = fleet.cache_put(&key, answer, ttl).await;
                });
            }
            cache.put(key, reply.clone());
        }
        let end = CallEnd {
            served: Some((hop, model)),
            latency: reply.latency,
            http_status: Some(reply.status),
            request_id: reply.request_id().map(std::borrow::Cow::Borrowed),
            usage: reply.usage,
            error: None,
            stream: self.stream,
            stream_class: None,
            source: Some("live"),
        };
        report.conclude(end);
        self.send_reply(Ok(reply));
    }
}
