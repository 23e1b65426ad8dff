using Microsoft.Extensions.Logging;

namespace DirBackup.Restore;

internal static partial class RestoreLog
{
    [LoggerMessage(Level = LogLevel.Debug, Message = "{Volume} {Device}: exported as a file sharing the layers' blocks at {Path}")]
    public static partial void SharedBlocks(ILogger logger, string volume, string device, string path);

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Volume} {Device}: served over FUSE at {Path}; no file of shared blocks: {WhyNot}")]
    public static partial void ServedOverFuse(ILogger logger, string volume, string device, string path, string whyNot);

    [LoggerMessage(Level = LogLevel.Warning, Message = "restore of {Volume} on {Root} ended without its cleanup call: the process that made its calls ({Pids}) is gone, so its exports are removed and the backup is free again")]
    public static partial void Abandoned(ILogger logger, string volume, string root, string pids);

    [LoggerMessage(Level = LogLevel.Warning, Message = "restore of {Volume} on {Root} ended without its cleanup call, and cleaning up after it failed (tried again later): {Error}")]
    public static partial void AbandonedNotEnded(ILogger logger, string volume, string root, string error);
}
