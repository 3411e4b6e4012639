//! The label sets of weir's metric families: one struct per combination of labels a
//! series carries, so a label can be neither forgotten nor misspelled.

use prometheus_client::encoding::EncodeLabelSet;

/// Labels shared by every per-component series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component_id: String,
    pub component_kind: String,
    pub component_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub output: String,
}

/// Labels of a buffer's series: its component, and `buffer_type`: `channel` (the bounded
/// input channel every consuming component has), `memory` or `disk` (a sink's `buffer`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BufferLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub buffer_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub error_type: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscardLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub intentional: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    /// `late` or `future`.
    pub bound: String,
    /// `drop`, `route` or `adjust`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregateLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub aggregate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// A component's series by `reason` (a device gateway's disconnects and refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentReasonLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub reason: String,
}

/// Audit events by `outcome`: `ok`, `refused`, `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub outcome: String,
}

/// Devices in the registry, by `status` (enabled, disabled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceStatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    /// `raised`, `severity_changed`, `cleared` or `acknowledged`.
    pub state: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    #[prometheus(flatten)]
    pub component: ComponentLabels,
    /// `sent`, `failed`, `throttled`, `deduplicated` or `dropped`.
    pub outcome: String,
}

/// Direct-method calls by `outcome` (`answered`, `not_connected`, `timeout`,
/// `disconnected`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodOutcomeLabels {
    pub outcome: String,
}

/// Twin changes by `kind` (`desired`, `reported`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TwinKindLabels {
    pub kind: String,
}
