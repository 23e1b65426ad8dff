using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Backup;

/// <summary>vzdump's per-guest log (/var/log/vzdump/&lt;type&gt;-&lt;vmid&gt;.log), kept with the backup as backup.log.</summary>
public static class LogFile
{
    public const string FileName = "backup.log";

    public static async Task KeepAsync(string source, GuestBackup session, long maxBytes, CancellationToken cancellationToken)
    {
        if (source.Length == 0 || source[0] != '/' || source.Any(char.IsControl))
        {
            throw DirBackupException.InvalidParams($"log file '{source}' is not an absolute path");
        }
        if (Libc.FileType(source) != Libc.S_IFREG)
        {
            throw DirBackupException.InvalidParams($"log file '{source}' is not a regular file");
        }
        var dir = session.FinalDir;
        var tmp = Path.Combine(dir, "." + FileName + ".tmp");
        await using (var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            if (input.Length > maxBytes)
            {
                throw DirBackupException.InvalidValue($"log file '{source}' is larger than {maxBytes} bytes");
            }
            await using var output = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None);
            await input.CopyToAsync(output, cancellationToken).ConfigureAwait(false);
            output.Flush(flushToDisk: true);
        }
        File.Move(tmp, Path.Combine(dir, FileName), overwrite: true);
        Libc.FsyncDirectory(dir);
    }
}
