using Microsoft.Extensions.Logging;

namespace DirBackup.Backup;

internal static partial class BackupLog
{
    [LoggerMessage(Level = LogLevel.Debug, Message = "{Device}: image created in {CreateMs:0} ms, target served after {ServeMs:0} ms, backup_vm waited {WaitMs:0} ms for them, copied in {CopyMs:0} ms, target stopped in {StopMs:0} ms, image synced in {SyncMs:0} ms")]
    public static partial void DevicePhases(ILogger logger, string device, double createMs, double serveMs, double waitMs, double copyMs, double stopMs, double syncMs);

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Device}: the target started ahead at {Image} failed, backup_vm will start it again: {Error}")]
    public static partial void TargetAheadFailed(ILogger logger, string device, string image, string error);
}
