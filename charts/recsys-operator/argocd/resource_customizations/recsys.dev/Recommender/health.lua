-- Argo CD health of a recsys.dev Recommender, read from what the operator reports in status.
-- Modelled on Argo Rollouts' health: the canary rollout decides while one runs, the Ready
-- condition once it is done. Only Lua's base and table libraries are used, because Argo CD
-- runs a customization from argocd-cm without the others unless it sets useOpenLibs.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function present(s)
  return s ~= nil and s ~= ""
end

-- "canary mv-2 at 20%, step 2/4" from whichever of those parts the status has.
local function progress(rollout)
  local parts = {}
  if present(rollout.canary) then
    local canary = "canary " .. rollout.canary
    if rollout.canaryWeight ~= nil then
      canary = canary .. " at " .. tostring(rollout.canaryWeight) .. "%"
    end
    table.insert(parts, canary)
  elseif rollout.canaryWeight ~= nil then
    table.insert(parts, "canary weight " .. tostring(rollout.canaryWeight) .. "%")
  end
  if rollout.currentStepIndex ~= nil then
    local steps = nil
    if obj.spec ~= nil and obj.spec.serving ~= nil and obj.spec.serving.rollout ~= nil then
      steps = obj.spec.serving.rollout.steps
    end
    if steps ~= nil and #steps > 0 then
      local i = rollout.currentStepIndex + 1
      if i > #steps then
        i = #steps
      end
      table.insert(parts, "step " .. tostring(i) .. "/" .. tostring(#steps))
    elseif steps == nil then
      table.insert(parts, "step " .. tostring(rollout.currentStepIndex + 1))
    end
  end
  if present(rollout.message) then
    table.insert(parts, rollout.message)
  end
  return table.concat(parts, ", ")
end

local function labelled(label, detail)
  if present(detail) then
    return label .. ": " .. detail
  end
  return label
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
    or (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to report status"
  end
  return hs
end

local rollout = obj.status.rollout or {}
local phase = rollout.phase

if phase == "Aborted" then
  hs.status = "Degraded"
  local label = "Rollout aborted"
  if present(rollout.abortedVersion) then
    label = "Rollout of " .. rollout.abortedVersion .. " aborted"
  end
  hs.message = labelled(label, rollout.message)
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  local label = "Rollout paused"
  if present(rollout.pauseReason) then
    label = label .. " (" .. rollout.pauseReason .. ")"
  end
  hs.message = labelled(label, progress(rollout))
  return hs
end

if phase == "Progressing" or phase == "Promoting" then
  hs.status = "Progressing"
  local label = "Rollout progressing"
  if phase == "Promoting" then
    label = "Rollout promoting"
  end
  hs.message = labelled(label, progress(rollout))
  return hs
end

local ready = condition("Ready")
if (phase == nil or phase == "Healthy") and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if present(rollout.stable) then
    hs.message = "Serving " .. rollout.stable
  else
    hs.message = ready.message or ""
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil and present(ready.message) then
  hs.message = ready.message
elseif present(phase) then
  hs.message = "Rollout phase " .. phase .. ", waiting for Ready"
else
  hs.message = "Waiting for the Ready condition"
end
return hs
