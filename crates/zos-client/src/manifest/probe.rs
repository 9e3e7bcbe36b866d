//! Probes as the zmachine healthcheck, a command zos-init runs in the machine.
//!
//! - `livenessProbe.exec.command` → `healthcheck.test`; `periodSeconds` (10) →
//!   `interval_secs`, `timeoutSeconds` (1) → `timeout_secs`, `failureThreshold` (3) →
//!   `retries`, `initialDelaySeconds` (0) → `start_period_secs`; an unhealthy machine is
//!   restarted, as the kubelet restarts the container.
//! - `startupProbe` beside a liveness probe: the time Kubernetes gives it
//!   (`initialDelaySeconds` + `failureThreshold` × `periodSeconds`) is added to
//!   `start_period_secs`; its own command is not run. Alone it is not supported (the
//!   healthcheck keeps checking after start).
//! - `readinessProbe`, and `httpGet`, `tcpSocket` and `grpc` handlers: not supported (the
//!   field check names them): nothing routes by readiness, and the healthcheck runs a
//!   command in the machine where Kubernetes probes from the node.

use super::{Ctx, ManifestError, Object};
use k8s_openapi::api::core::v1::{Container, Probe};
use zos_types::Healthcheck;

/// The healthcheck for container `c` (at path `cat`), if it has a liveness probe.
pub(crate) fn healthcheck(
    ctx: &mut Ctx,
    obj: &Object,
    cat: &str,
    c: &Container,
) -> Result<Option<Healthcheck>, ManifestError> {
    let (live, startup) = match (&c.liveness_probe, &c.startup_probe) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            ctx.unsupported(
                obj,
                format!("{cat}.startupProbe"),
                "a startup probe without a liveness probe is not built: the healthcheck \
                 would keep checking after start",
            );
            return Ok(None);
        }
        (Some(live), startup) => (live, startup),
    };
    let at = format!("{cat}.livenessProbe");
    let Some(test) = live.exec.as_ref().and_then(|e| e.command.clone()) else {
        // httpGet, tcpSocket and grpc are named by the field check.
        return Ok(None);
    };
    if test.is_empty() {
        return Err(ctx.invalid(
            obj,
            &format!("{at}.exec.command"),
            "give the command to run",
        ));
    }
    let mut start_period = seconds(
        ctx,
        obj,
        &at,
        "initialDelaySeconds",
        live.initial_delay_seconds,
        0,
    )?;
    for (name, probe) in [
        ("livenessProbe", Some(live)),
        ("startupProbe", startup.as_ref()),
    ] {
        if let Some(n) = probe.and_then(|p| p.success_threshold).filter(|n| *n != 1) {
            return Err(ctx.invalid(
                obj,
                &format!("{cat}.{name}.successThreshold"),
                &format!("{n}: must be 1 for liveness and startup probes"),
            ));
        }
    }
    if let Some(s) = startup {
        start_period = start_period.saturating_add(startup_budget(
            ctx,
            obj,
            &format!("{cat}.startupProbe"),
            s,
        )?);
    }
    Ok(Some(Healthcheck {
        test,
        interval_secs: seconds(ctx, obj, &at, "periodSeconds", live.period_seconds, 10)?.max(1),
        timeout_secs: seconds(ctx, obj, &at, "timeoutSeconds", live.timeout_seconds, 1)?.max(1),
        retries: seconds(ctx, obj, &at, "failureThreshold", live.failure_threshold, 3)?.max(1),
        start_period_secs: start_period,
    }))
}

/// The seconds Kubernetes lets a startup probe fail before it gives up.
fn startup_budget(ctx: &Ctx, obj: &Object, at: &str, p: &Probe) -> Result<u32, ManifestError> {
    let delay = seconds(
        ctx,
        obj,
        at,
        "initialDelaySeconds",
        p.initial_delay_seconds,
        0,
    )?;
    let failures = seconds(ctx, obj, at, "failureThreshold", p.failure_threshold, 3)?;
    let period = seconds(ctx, obj, at, "periodSeconds", p.period_seconds, 10)?;
    Ok(delay.saturating_add(failures.saturating_mul(period)))
}

fn seconds(
    ctx: &Ctx,
    obj: &Object,
    at: &str,
    field: &str,
    value: Option<i32>,
    default: u32,
) -> Result<u32, ManifestError> {
    match value {
        None => Ok(default),
        Some(v) => u32::try_from(v)
            .map_err(|_| ctx.invalid(obj, &format!("{at}.{field}"), &format!("{v} is negative"))),
    }
}
