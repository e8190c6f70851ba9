//! Spawning seawall under your own ractor supervisor.
//!
//! Your app's supervisor links seawall's root with `spawn_linked`. Seawall restarts its own
//! children (a panicking breaker or governor costs no caller its answer); only when restarts
//! exceed its intensity does seawall's supervisor fail, and then yours decides what to do. Here
//! it builds a fresh runtime.
//!
//! Run: `cargo run --example supervised`

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use seawall::core::scripted::ScriptedUpstream;
use seawall::core::{Call, Error, Event, RestartIntensity, Seawall};

/// Your application's supervisor.
struct App;

enum AppMsg {
    /// Hand out the current seawall handle.
    Seawall(RpcReplyPort<Seawall>),
}

struct AppState {
    seawall: Seawall,
    upstream: ScriptedUpstream,
    generation: u32,
}

async fn start_seawall(up: &ScriptedUpstream, me: &ActorRef<AppMsg>) -> Result<Seawall, Error> {
    Seawall::builder()
        .upstream("scripted", up.clone())
        .chain("primary", ["primary", "fallback"])
        .restart_intensity(RestartIntensity {
            max_restarts: 3,
            within: Duration::from_secs(10),
        })
        .spawn_linked(me.get_cell())
        .await
}

impl Actor for App {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = ScriptedUpstream;

    async fn pre_start(
        &self,
        myself: ActorRef<AppMsg>,
        upstream: ScriptedUpstream,
    ) -> Result<AppState, ActorProcessingErr> {
        let seawall = start_seawall(&upstream, &myself).await?;
        Ok(AppState {
            seawall,
            upstream,
            generation: 1,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<AppMsg>,
        msg: AppMsg,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AppMsg::Seawall(reply) => {
                let _ = reply.send(state.seawall.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMsg>,
        evt: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = evt {
            println!("app supervisor: seawall failed ({err}); starting a fresh runtime");
            state.seawall = start_seawall(&state.upstream, &myself).await?;
            state.generation += 1;
        }
        Ok(())
    }
}

async fn current(app: &ActorRef<AppMsg>) -> Result<Seawall, Box<dyn std::error::Error>> {
    Ok(ractor::call!(app, AppMsg::Seawall)?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The drill's injected panics are expected: keep their backtraces out of the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("injected panic") {
            default_hook(info);
        }
    }));
    let up = ScriptedUpstream::new();
    up.healthy("primary", Duration::from_millis(5));
    up.healthy("fallback", Duration::from_millis(5));
    let (app, _) = Actor::spawn(None, App, up.clone()).await?;

    let sw = current(&app).await?;
    let mut events = sw.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if let Event::Restarted {
                child,
                recent_restarts,
                ..
            } = ev
            {
                println!("  seawall restarted {child} ({recent_restarts} recent)");
            }
        }
    });

    // Chaos drill: breakers and the governor panic while calls are in flight.
    for (round, target) in ["primary", "governor", "fallback"].iter().enumerate() {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let sw = sw.clone();
                tokio::spawn(async move { sw.complete(Call::new("primary", 32).user("hi")).await })
            })
            .collect();
        sw.inject_panic(target).await?;
        let mut ok = 0;
        for c in calls {
            if c.await?.is_ok() {
                ok += 1;
            }
        }
        println!(
            "round {}: panicked {target}; {ok}/20 calls answered",
            round + 1
        );
    }
    println!("restarts so far: {}", sw.restarts().await?);

    // One panic too many inside the intensity window: seawall gives up, the app restarts it.
    sw.inject_panic("primary").await?;
    // Once seawall's root has stopped, the app has its failure notice queued ahead of our ask.
    sw.supervisor()
        .get_cell()
        .wait(Some(Duration::from_secs(5)))
        .await?;
    let fresh = current(&app).await?;
    let reply = fresh.complete(Call::new("primary", 32).user("hi")).await?;
    println!(
        "after the app's restart: served by {} (restarts in the new runtime: {})",
        reply.model,
        fresh.restarts().await?
    );
    app.stop(None);
    Ok(())
}
