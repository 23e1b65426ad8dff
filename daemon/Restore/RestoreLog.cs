using Microsoft.Extensions.Logging;

namespace DirBackup.Restore;

internal static partial class RestoreLog
{
    [LoggerMessage(Level = LogLevel.Debug, Message = "{Volume} {Device}: exported as a file sharing the layers' blocks at {Path}")]
    public static partial void SharedBlocks(ILogger logger, string volume, string device, string path);

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Volume} {Device}: served over FUSE at {Path}; no file of shared blocks: {WhyNot}")]
    public static partial void ServedOverFuse(ILogger logger, string volume, string device, string path, string whyNot);
}
