namespace DirBackup.Errors;

/// <summary>
/// The one exception family of the daemon. Its message is what an administrator reads in the PVE task
/// log, so it is always one line and never carries a stack trace.
/// </summary>
public class DirBackupException : Exception
{
    public DirBackupException(ErrorCode code, string message, Exception? inner = null)
        : base(OneLine(message), inner)
    {
        Code = code;
    }

    public ErrorCode Code { get; }

    public static string OneLine(string message)
    {
        var trimmed = message.Trim();
        if (trimmed.IndexOfAny(['\r', '\n']) < 0)
        {
            return trimmed;
        }
        return string.Join(' ', trimmed.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    public static DirBackupException InvalidParams(string message) => new(ErrorCode.InvalidParams, message);
    public static DirBackupException InvalidValue(string message) => new(ErrorCode.InvalidValue, message);
    public static DirBackupException NotFound(string message) => new(ErrorCode.NotFound, message);
    public static DirBackupException Io(string message, Exception? inner = null) => new(ErrorCode.IoError, message, inner);
    public static DirBackupException StorageUnavailable(string message) => new(ErrorCode.StorageUnavailable, message);
}
